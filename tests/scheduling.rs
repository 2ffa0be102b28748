//! Fair dispatch between orgs and flow control within one: a flood or ten thousand keys in one org
//! do not hold back another; concurrency keys, debounce, throttle and priority behave as the
//! definition says.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use oa_e2e::{active_agent, executions, status_and_json};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

/// An agent on `psa:<event_type>` whose one step is a model call answered after `delay_ms`, with
/// the flow control in `flow` (merged into the definition).
fn agent(event_type: &str, delay_ms: u64, flow: Value) -> Value {
    let mut definition = json!({
        "name": format!("{event_type} with flow control"),
        "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": event_type},
        "steps": [{"id": "think", "type": "ai_reason", "model_tier": "quick",
                   "prompt": format!("Ticket {{{{ event_payload.ticket_id }}}} #{{{{ event_payload.n }}}} sandbox-delay-ms:{delay_ms}"),
                   "output_schema": {"type": "object", "required": ["summary"],
                                     "properties": {"summary": {"type": "string"}}}}],
        "client_scope": "all",
    });
    for (key, value) in flow.as_object().unwrap() {
        definition[key] = value.clone();
    }
    definition
}

fn ticket_event(org: &str, event_type: &str, ticket: &str, n: usize) -> oa_bus::Envelope {
    oa_bus::Envelope::new(org, "psa", event_type, json!({"ticket_id": ticket, "n": n, "escalated_to": "p1"}))
}

/// Publishes `events` one after the other, each confirmed before the next: their bus order is
/// theirs.
async fn publish_in_order(plane: &TestPlane, events: &[oa_bus::Envelope]) {
    for event in events {
        plane.publish_on_bus(event).await.unwrap();
    }
}

async fn detail(plane: &TestPlane, org: &str, id: &str) -> Value {
    let (status, detail) = plane.get_json(&format!("/api/executions/{id}"), org).await;
    assert_eq!(status, 200, "{detail}");
    detail
}

/// Every execution of `org` once `count` exist and none is live, oldest first, in detail.
async fn finished(plane: &TestPlane, org: &str, count: usize, seconds: u64) -> Vec<Value> {
    let list = plane
        .eventually(seconds, || async {
            let list = executions(plane, org, "limit=200").await;
            let items = list["executions"].as_array().cloned().unwrap_or_default();
            let done = items.len() == count
                && items
                    .iter()
                    .all(|e| matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled")));
            done.then_some(items)
        })
        .await
        .unwrap_or_else(|| panic!("{count} executions of {org} did not all finish in {seconds}s"));
    let mut details = Vec::new();
    for item in list.iter().rev() {
        details.push(detail(plane, org, item["id"].as_str().unwrap()).await);
    }
    details
}

/// Whether, within `seconds`, one of the org's pending executions shows `reason`.
async fn waits_as(plane: &TestPlane, org: &str, reason: &str, seconds: u64) -> bool {
    plane
        .eventually(seconds, || async {
            let list = executions(plane, org, "status=pending&limit=200").await;
            let items = list["executions"].as_array().cloned().unwrap_or_default();
            items.iter().any(|e| e["pending_reason"] == reason).then_some(())
        })
        .await
        .is_some()
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("a timestamp, got {value}")).parse().unwrap()
}

/// The time from publishing one event for `org` to its execution completing, as the client sees
/// it (ingest included).
async fn one_event_latency(plane: &TestPlane, org: &str, n: usize) -> Duration {
    let before = executions(plane, org, "status=completed&limit=200").await["total"].as_u64().unwrap();
    let started = Instant::now();
    plane.publish_on_bus(&ticket_event(org, "ticket.created", &format!("tkt_b{n}"), n)).await.unwrap();
    plane
        .eventually(60, || async {
            let done = executions(plane, org, "status=completed&limit=200").await["total"].as_u64().unwrap();
            (done > before).then_some(())
        })
        .await
        .expect("org B's execution completes");
    started.elapsed()
}

async fn queued(plane: &TestPlane, org: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM executions.executions WHERE org_id = $1")
        .bind(org)
        .fetch_one(&plane.db.admin)
        .await
        .unwrap()
}

/// Measures org B alone, then floods org A with `flood` (a builder of A's events) until all of
/// them are queued, and measures B again while A's work fills every worker slot.
async fn b_during_a_flood(
    plane: &TestPlane,
    a: &str,
    b: &str,
    flood: Vec<oa_bus::Envelope>,
) -> (Duration, Duration) {
    // Warm-up, then B alone.
    one_event_latency(plane, b, 0).await;
    let alone = one_event_latency(plane, b, 1).await;
    let count = flood.len() as i64;
    plane.publish_many_on_bus(&flood).await.unwrap();
    let ingested = plane.eventually(120, || async { (queued(plane, a).await >= count).then_some(()) }).await;
    assert!(ingested.is_some(), "A's flood is ingested");
    let waiting = executions(plane, a, "status=pending&limit=1").await["total"].as_u64().unwrap();
    assert!(waiting > 100, "A's flood still waits for workers when B's event comes ({waiting} pending)");
    let during = one_event_latency(plane, b, 2).await;
    let left = executions(plane, a, "status=pending&limit=1").await["total"].as_u64().unwrap();
    assert!(left > 0, "A's flood was still queued when B's execution completed");
    (alone, during)
}

#[tokio::test]
async fn a_flood_from_one_org_does_not_hold_back_another_orgs_event() {
    let plane = TestPlane::start().await.unwrap();
    let a = plane.db.create_org("enterprise").await.unwrap();
    let b = plane.db.create_org("starter").await.unwrap();
    oa_e2e::pause_system_dispatch(&plane, &b).await;
    active_agent(&plane, &a, &agent("ticket.escalated", 20, json!({}))).await;
    active_agent(&plane, &b, &agent("ticket.created", 20, json!({}))).await;
    let flood = (0..5_000).map(|n| ticket_event(&a, "ticket.escalated", &format!("tkt_{n}"), n)).collect();
    let (alone, during) = b_during_a_flood(&plane, &a, &b, flood).await;
    let bound = (alone * 5).max(Duration::from_secs(2));
    eprintln!("fairness: B alone {alone:?}, during A's 5,000-event flood {during:?} (bound {bound:?})");
    assert!(during <= bound, "B took {during:?} during A's flood, {alone:?} alone");
}

#[tokio::test]
async fn ten_thousand_concurrency_keys_in_one_org_do_not_slow_another() {
    let plane = TestPlane::start().await.unwrap();
    let a = plane.db.create_org("enterprise").await.unwrap();
    let b = plane.db.create_org("starter").await.unwrap();
    oa_e2e::pause_system_dispatch(&plane, &b).await;
    let keyed = agent(
        "ticket.escalated",
        20,
        json!({"concurrency": {"key": "{{ event_payload.ticket_id }}", "limit": 1}}),
    );
    active_agent(&plane, &a, &keyed).await;
    active_agent(&plane, &b, &agent("ticket.created", 20, json!({}))).await;
    let flood = (0..10_000).map(|n| ticket_event(&a, "ticket.escalated", &format!("tkt_{n}"), n)).collect();
    let (alone, during) = b_during_a_flood(&plane, &a, &b, flood).await;
    let bound = (alone * 5).max(Duration::from_secs(2));
    eprintln!("many keys: B alone {alone:?}, beside 10,000 keys {during:?} (bound {bound:?})");
    assert!(during <= bound, "B took {during:?} beside A's 10,000 keys, {alone:?} alone");
}

#[tokio::test]
async fn a_concurrency_key_runs_one_at_a_time_in_event_order() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let keyed = agent(
        "ticket.escalated",
        150,
        json!({"concurrency": {"key": "{{ event_payload.ticket_id }}", "limit": 1}}),
    );
    active_agent(&plane, &org, &keyed).await;
    let events: Vec<_> = (1..=8).map(|n| ticket_event(&org, "ticket.escalated", "tkt_same", n)).collect();
    publish_in_order(&plane, &events).await;

    // While they wait, the others say why.
    assert!(
        waits_as(&plane, &org, "concurrency", 10).await,
        "waiting executions show pending_reason concurrency"
    );

    let runs = finished(&plane, &org, 8, 60).await;
    let mut spans: Vec<(usize, DateTime<Utc>, DateTime<Utc>)> = runs
        .iter()
        .map(|run| {
            assert_eq!(run["status"], "completed", "{run}");
            let step = &run["steps"][0];
            let n = run["trigger_event"]["payload"]["n"].as_u64().unwrap() as usize;
            (n, time(&step["started_at"]), time(&step["completed_at"]))
        })
        .collect();
    spans.sort_by_key(|(_, started, _)| *started);
    let order: Vec<usize> = spans.iter().map(|(n, ..)| *n).collect();
    assert_eq!(order, (1..=8).collect::<Vec<_>>(), "they ran in the events' order");
    for pair in spans.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "{} started before {} ended: {spans:?}", pair[1].0, pair[0].0);
    }
}

#[tokio::test]
async fn a_burst_for_one_key_is_debounced_to_its_last_event() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let debounced = agent(
        "ticket.escalated",
        0,
        json!({"debounce": {"key": "{{ event_payload.ticket_id }}", "period": "2s"}}),
    );
    active_agent(&plane, &org, &debounced).await;
    let events: Vec<_> = (1..=5).map(|n| ticket_event(&org, "ticket.escalated", "tkt_burst", n)).collect();
    // Another ticket is a key of its own: it runs too.
    let other = ticket_event(&org, "ticket.escalated", "tkt_other", 99);
    publish_in_order(&plane, &events).await;
    plane.publish_on_bus(&other).await.unwrap();

    assert!(
        waits_as(&plane, &org, "debounce", 2).await,
        "the execution waits out its period as pending_reason debounce"
    );

    let runs = finished(&plane, &org, 6, 30).await;
    let ran: Vec<&Value> = runs.iter().filter(|r| r["status"] == "completed").collect();
    assert_eq!(ran.len(), 2, "one execution for the burst, one for the other ticket");
    let last = ran.iter().find(|r| r["trigger_event"]["payload"]["ticket_id"] == "tkt_burst").unwrap();
    assert_eq!(last["trigger_event"]["payload"]["n"], 5, "the burst ran with its last event");
    let superseded: Vec<&Value> = runs.iter().filter(|r| r["status"] == "cancelled").collect();
    assert_eq!(superseded.len(), 4);
    for run in superseded {
        assert_eq!(run["superseded_by"], last["id"], "{run}");
        assert_eq!(run["error"]["code"], "superseded", "{run}");
        assert!(run["trigger_event"]["payload"]["n"].as_u64().unwrap() < 5);
    }
    assert_eq!(plane.sandbox.of_kind("llm").len(), 2, "two model calls");
}

#[tokio::test]
async fn a_throttle_starts_no_more_than_its_limit_per_period() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let throttled = agent(
        "ticket.escalated",
        0,
        json!({"throttle": {"key": "{{ event.source_product }}", "limit": 2, "period": "1s"}}),
    );
    active_agent(&plane, &org, &throttled).await;
    let events: Vec<_> =
        (1..=10).map(|n| ticket_event(&org, "ticket.escalated", &format!("tkt_{n}"), n)).collect();
    plane.publish_many_on_bus(&events).await.unwrap();

    assert!(waits_as(&plane, &org, "throttle", 5).await, "the excess waits as pending_reason throttle");

    let runs = finished(&plane, &org, 10, 30).await;
    assert!(runs.iter().all(|r| r["status"] == "completed"), "nothing is dropped");
    let mut starts: Vec<DateTime<Utc>> = runs.iter().map(|r| time(&r["steps"][0]["started_at"])).collect();
    starts.sort();
    // Any two starts `limit` apart are a period apart. The throttle counts a start when a worker
    // claims the execution; the step records it a moment later (a pool wait under load), hence
    // the slack.
    for pair in starts.windows(3) {
        let gap = pair[2] - pair[0];
        assert!(gap >= chrono::Duration::milliseconds(800), "3 starts within {gap}: {starts:?}");
    }
    assert!(starts[9] - starts[0] >= chrono::Duration::milliseconds(3_900), "{starts:?}");
}

#[tokio::test]
async fn high_priority_work_goes_before_low_within_an_org_at_its_cap() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    oa_e2e::pause_system_dispatch(&plane, &org).await;
    // The operator caps the org at one running execution.
    oa_tenancy::OrgStore::new(plane.db.admin.clone())
        .set_dispatch_override(&org, None, Some(1))
        .await
        .unwrap();
    active_agent(&plane, &org, &agent("ticket.escalated", 300, json!({"priority": "low"}))).await;
    let urgent = active_agent(&plane, &org, &agent("ticket.created", 0, json!({"priority": "high"}))).await;
    let lows: Vec<_> =
        (1..=4).map(|n| ticket_event(&org, "ticket.escalated", &format!("tkt_{n}"), n)).collect();
    publish_in_order(&plane, &lows).await;
    plane.eventually(10, || async { (queued(&plane, &org).await == 4).then_some(()) }).await.unwrap();
    plane.publish_on_bus(&ticket_event(&org, "ticket.created", "tkt_urgent", 0)).await.unwrap();

    let runs = finished(&plane, &org, 5, 30).await;
    let mut spans: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = runs
        .iter()
        .map(|r| {
            (r["agent_id"].as_str().unwrap().to_owned(), time(&r["started_at"]), time(&r["completed_at"]))
        })
        .collect();
    spans.sort_by_key(|(_, started, _)| *started);
    let position = spans.iter().position(|(agent, ..)| *agent == urgent).unwrap();
    assert!(
        position <= 2,
        "the high-priority execution ran before the low ones queued ahead of it: {spans:?}"
    );
    for pair in spans.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "the cap of one held: {spans:?}");
    }
}

#[tokio::test]
async fn flow_control_is_validated_at_create() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let bad = agent(
        "ticket.escalated",
        0,
        json!({
            "priority": "urgent",
            "concurrency": {"key": "{{ steps.think.output.summary }}", "limit": 0},
            "debounce": {"key": "", "period": "forever"},
            "throttle": {"key": "{{ event.id }}", "limit": 2, "period": "1s", "burst": 3},
        }),
    );
    let request = plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&bad);
    let (status, body) = status_and_json(request.send().await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_agent_config");
    let paths: Vec<&str> =
        body["details"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    for path in [
        "priority",
        "concurrency.key",
        "concurrency.limit",
        "debounce.key",
        "debounce.period",
        "throttle.burst",
    ] {
        assert!(paths.contains(&path), "{path} is named: {body}");
    }
    assert!(!paths.contains(&"throttle.key"), "{body}");
}
