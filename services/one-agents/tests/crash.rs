//! A worker killed with SIGKILL mid-execution loses nothing: another worker process resumes the
//! execution from its last persisted step, and no side effect happens twice.

use std::time::Duration;

use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

mod common;

use common::{active_agent, pause_dispatch};

fn spawn_worker(plane: &TestPlane) -> std::process::Child {
    common::spawn(plane, "worker", &[])
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_worker_killed_mid_execution_is_resumed_by_another_without_repeating_side_effects() {
    // The plane in this process runs no worker; workers are child processes we can kill.
    let (plane, org) = common::plane_without_worker(|c| c.nats.ack_wait_seconds = 2).await;
    let definition = json!({
        "name": "Crash course", "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [
            {"id": "first", "type": "notification", "channel": "sms", "recipients": ["+15550100001"], "body": "first {{ event_payload.ticket_id }}"},
            {"id": "slow", "type": "action", "action": "psa.update_ticket",
             "params": {"ticket_id": "{{ event_payload.ticket_id }}", "internal_note": "sandbox-delay-ms:4000"}},
            {"id": "last", "type": "notification", "channel": "sms", "recipients": ["+15550100002"], "body": "last"}
        ],
        "client_scope": "all"
    });
    let id = active_agent(&plane, &org, &definition).await;

    let mut doomed = spawn_worker(&plane);
    let event = oa_bus::Envelope::new(
        &org,
        "psa",
        "ticket.created",
        json!({"ticket_id": "tkt_crash", "priority": "p1", "client_id": "cl_1"}),
    );
    plane.publish_on_bus(&event).await.unwrap();

    // The worker is inside the slow action: the product received it, the worker has no answer yet.
    plane
        .eventually(30, || async { (!plane.sandbox.of_kind("action").is_empty()).then_some(()) })
        .await
        .expect("the first worker reaches the slow action");
    doomed.kill().expect("SIGKILL");
    doomed.wait().unwrap();
    assert_eq!(
        plane.sandbox.of_kind("sms").len(),
        1,
        "only the first notification went out before the crash"
    );

    let mut rescuer = spawn_worker(&plane);
    let finished = plane
        .eventually(40, || async {
            let (_, list) = plane.get_json(&format!("/api/executions?agent_id={id}"), &org).await;
            let execution = list["executions"].get(0).cloned()?;
            (execution["status"] == "completed").then_some(execution)
        })
        .await;
    rescuer.kill().ok();
    rescuer.wait().ok();
    let execution = finished.expect("another worker completes the execution");

    let sms = plane.sandbox.of_kind("sms");
    let bodies: Vec<&str> = sms.iter().map(|r| r.body["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["first tkt_crash", "last"], "each notification exactly once");
    assert_eq!(plane.sandbox.of_kind("action").len(), 1, "the product action exactly once");
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", execution["id"].as_str().unwrap()), &org).await;
    let statuses: Vec<&str> =
        detail["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["completed", "completed", "completed"]);
    let (_, list) = plane.get_json("/api/executions", &org).await;
    assert_eq!(list["total"], 1, "the crash created no second execution");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_reservation_left_by_a_killed_worker_is_settled_by_the_sweeper_and_never_charged_twice() {
    let roles = ["gateway", "agents", "catalog", "executions", "approvals", "credits"];
    let plane = TestPlane::start_roles(&roles, |c| {
        c.nats.ack_wait_seconds = 2;
        c.credits.reservation_ttl_seconds = 1;
    })
    .await
    .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    pause_dispatch(&plane, &org).await;
    let definition = json!({
        "name": "Slow thinker", "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [common::slow_thinking_step(4000)],
        "client_scope": "all"
    });
    active_agent(&plane, &org, &definition).await;

    let mut doomed = spawn_worker(&plane);
    common::publish_ticket_until(&plane, &org, "tkt_think", "llm").await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().unwrap();
    let reserved: i64 = sqlx::query_scalar("SELECT reserved FROM credits.balances WHERE org_id = $1")
        .bind(&org)
        .fetch_one(&plane.db.admin)
        .await
        .unwrap();
    assert_eq!(reserved, 5, "the dead worker left its reservation open");

    // Nobody will resume it: an admin cancels it. The sweeper of a live worker then releases it.
    let (_, list) =
        json_of(plane.as_user(Method::GET, "/api/executions", &org, "admin").send().await.unwrap()).await;
    let execution = list["executions"][0]["id"].as_str().unwrap().to_owned();
    let cancel = plane.as_user(Method::POST, &format!("/api/executions/{execution}/cancel"), &org, "admin");
    assert_eq!(cancel.send().await.unwrap().status(), 200);
    let mut sweeper = spawn_worker(&plane);
    let settled = plane
        .eventually(30, || async {
            let (reserved, used): (i64, i64) =
                sqlx::query_as("SELECT reserved, used FROM credits.balances WHERE org_id = $1")
                    .bind(&org)
                    .fetch_one(&plane.db.admin)
                    .await
                    .ok()?;
            (reserved == 0).then_some(used)
        })
        .await;
    // A run the live worker finishes is charged once.
    let second = oa_bus::Envelope::new(
        &org,
        "psa",
        "ticket.created",
        json!({"ticket_id": "tkt_two", "client_id": "cl_1"}),
    );
    plane.publish_on_bus(&second).await.unwrap();
    let completed = plane
        .eventually(30, || async {
            let (_, list) = json_of(
                plane
                    .as_user(Method::GET, "/api/executions?status=completed", &org, "admin")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            list["executions"].get(0).cloned()
        })
        .await;
    sweeper.kill().ok();
    sweeper.wait().ok();
    assert_eq!(settled, Some(0), "the sweeper released the orphaned reservation; nothing was charged for it");
    assert!(completed.is_some(), "the next run completes");
    let ledger: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, sum(amount)::bigint FROM credits.ledger WHERE org_id = $1 GROUP BY kind ORDER BY kind",
    )
    .bind(&org)
    .fetch_all(&plane.db.admin)
    .await
    .unwrap();
    assert_eq!(ledger, vec![("commit".to_owned(), 5), ("release".to_owned(), 5), ("reserve".to_owned(), 10)]);
    let (_, usage) = plane.get_json("/api/credits", &org).await;
    assert_eq!((usage["total_used"].as_i64(), usage["remaining"].as_i64()), (Some(5), Some(99_995)));
}
