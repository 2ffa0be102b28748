//! Graceful drain on SIGTERM, through the real binary: a worker stops pulling and hands a step it
//! cannot finish within the grace back to the bus, where another worker completes it exactly once;
//! a gateway fails readiness first, then refuses new connections and answers the requests in flight.

mod common;

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use oa_testkit::TestPlane;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{active_agent, sigterm, spawn};

/// Waits for `child` to exit, up to `limit`; kills it and fails if it does not.
async fn exit_within(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            panic!("the process did not exit within {limit:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_worker_sigtermed_mid_step_exits_within_the_grace_and_another_completes_the_run_once() {
    // A long ack wait: the second worker can only get the work this fast if it was handed back.
    let (plane, org) = common::plane_without_worker(|c| c.nats.ack_wait_seconds = 60).await;
    let definition = json!({
        "name": "Slow thinker", "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [
            common::slow_thinking_step(6000),
            {"id": "tell", "type": "notification", "channel": "sms", "recipients": ["+15550100009"],
             "body": "done {{ event_payload.ticket_id }}"}
        ],
        "client_scope": "all"
    });
    let id = active_agent(&plane, &org, &definition).await;

    let grace = 2;
    let mut draining = spawn(&plane, "worker", &[("ONE_AGENTS_SHUTDOWN__GRACE_SECONDS", grace.to_string())]);
    common::publish_ticket_until(&plane, &org, "tkt_drain", "llm").await;

    sigterm(&draining);
    let (status, took) = exit_within(&mut draining, Duration::from_secs(grace + 3)).await;
    assert!(status.success(), "a drained worker exits 0, got {status}");
    assert!(took <= Duration::from_secs(grace) + Duration::from_millis(900), "exited after {took:?}");
    assert!(plane.sandbox.of_kind("sms").is_empty(), "the step after the cut-off one has not run");

    let mut rescuer = spawn(&plane, "worker", &[]);
    let finished = plane
        .eventually(30, || async {
            let (_, list) = plane.get_json(&format!("/api/executions?agent_id={id}"), &org).await;
            let execution = list["executions"].get(0).cloned()?;
            (execution["status"] == "completed").then_some(execution)
        })
        .await;
    rescuer.kill().ok();
    rescuer.wait().ok();
    finished.expect("another worker completes the handed-back execution well before the ack wait");

    let sms = plane.sandbox.of_kind("sms");
    assert_eq!(sms.len(), 1, "one notification: {sms:?}");
    assert_eq!(sms[0].body["body"], "done tkt_drain");
    assert_eq!(plane.sandbox.of_kind("llm").len(), 2, "the cut-off model call was made again");
    let (_, list) = plane.get_json("/api/executions", &org).await;
    assert_eq!(list["total"], 1, "no second execution");
    let ledger: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, count(*), sum(amount)::bigint FROM credits.ledger WHERE org_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(&org)
    .fetch_all(&plane.db.admin)
    .await
    .unwrap();
    assert_eq!(
        ledger,
        vec![("commit".to_owned(), 1, 5), ("reserve".to_owned(), 1, 5)],
        "one reservation, reused by the repeated call, and one charge"
    );
}

#[tokio::test]
async fn a_sigtermed_gateway_fails_readiness_then_refuses_new_connections_and_answers_those_in_flight() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (_, key) = plane.db.create_key(&org, &[oa_domain::Scope::EventsPublish]).await.unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut gateway = spawn(
        &plane,
        "gateway",
        &[
            ("ONE_AGENTS_GATEWAY__LISTEN", addr.clone()),
            ("ONE_AGENTS_GATEWAY__REQUEST_TIMEOUT_MS", "60000".into()),
            ("ONE_AGENTS_SHUTDOWN__GRACE_SECONDS", "8".into()),
            ("ONE_AGENTS_SHUTDOWN__UNREADY_DELAY_MS", "1500".into()),
        ],
    );
    let http = reqwest::Client::new();
    let readyz = format!("http://{addr}/readyz");
    plane
        .eventually(30, || async {
            let response = http.get(&readyz).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await
        .expect("the gateway process becomes ready");

    // A request in flight: its body is half sent when the signal comes.
    let body = json!({"source_product": "psa", "event_type": "ticket.created",
                      "payload": {"ticket_id": "tkt_in_flight", "client_id": "cl_1"}})
    .to_string();
    let head = format!(
        "POST /api/events/publish HTTP/1.1\r\nHost: {addr}\r\nX-Integration-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    sigterm(&gateway);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unready = http.get(&readyz).send().await.expect("still accepting during the unready delay");
    assert_eq!(unready.status(), 503);
    let error: Value = unready.json().await.unwrap();
    assert_eq!(error["error"], "service_unavailable", "{error}");

    // After the delay the listener is closed: a new connection is refused.
    tokio::time::sleep(
        Duration::from_millis(1500).saturating_sub(signalled.elapsed()) + Duration::from_millis(500),
    )
    .await;
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(refused.is_err(), "a new connection after the delay is refused");

    // The request in flight is answered.
    in_flight.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), in_flight.read_to_end(&mut answer))
        .await
        .expect("the answer comes before the grace")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("\"accepted\""), "{answer}");

    let (status, _) = exit_within(&mut gateway, Duration::from_secs(10)).await;
    assert!(status.success(), "a drained gateway exits 0, got {status}");
    assert!(signalled.elapsed() < Duration::from_secs(8), "exited within the grace");
}
