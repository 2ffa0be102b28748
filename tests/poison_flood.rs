//! A flood of poison events from one org must not hold up another org's good event: 10,000
//! events holding a NUL, put straight on the bus, are dead-lettered while a good event published
//! right behind them runs within max(2 s, 5x its latency measured alone in the same test).

use std::time::{Duration, Instant};

use oa_bus::Envelope;
use oa_e2e::{active_agent, pause_system_dispatch};
use oa_testkit::TestPlane;
use serde_json::json;

const POISON_EVENTS: usize = 10_000;

fn ticket(org: &str, ticket_id: &str) -> Envelope {
    Envelope::new(org, "psa", "ticket.created", json!({"ticket_id": ticket_id, "subject": "Printer on fire"}))
}

/// Publishes `event` and returns how long until its execution exists.
async fn latency(plane: &TestPlane, org: &str, event: &Envelope) -> Duration {
    let started = Instant::now();
    plane.publish_on_bus(event).await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM executions.executions WHERE org_id = $1 AND event_id = $2",
        )
        .bind(org)
        .bind(&event.id)
        .fetch_one(&plane.db.admin)
        .await
        .unwrap()
    };
    while count().await == 0 {
        assert!(started.elapsed() < Duration::from_secs(120), "the good event never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn ten_thousand_poison_events_from_one_org_do_not_hold_up_another_orgs_event() {
    let plane = TestPlane::start().await.unwrap();
    let (attacker, victim) =
        (plane.db.create_org("pro").await.unwrap(), plane.db.create_org("pro").await.unwrap());
    pause_system_dispatch(&plane, &victim).await;
    let agent = json!({
        "name": "Notes", "category": "service_desk", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "note", "type": "transform", "output": {"ticket": "{{ event_payload.ticket_id }}"}}]
    });
    active_agent(&plane, &victim, &agent).await;
    // Warm up, then measure the good event alone.
    latency(&plane, &victim, &ticket(&victim, "tkt_warm")).await;
    let alone = latency(&plane, &victim, &ticket(&victim, "tkt_alone")).await;

    let poison: Vec<Envelope> = (0..POISON_EVENTS)
        .map(|n| {
            let mut event = ticket(&attacker, &format!("tkt_{n}"));
            event.payload["subject"] = json!("a\u{0}b");
            event
        })
        .collect();
    plane.publish_many_on_bus(&poison).await.unwrap();
    let behind = latency(&plane, &victim, &ticket(&victim, "tkt_behind")).await;
    let bound = (alone * 5).max(Duration::from_secs(2));
    println!("alone {alone:?}, behind {POISON_EVENTS} poison events {behind:?}, bound {bound:?}");
    assert!(behind <= bound, "the good event took {behind:?} behind the flood (alone {alone:?})");

    // Every poison event is dead-lettered, once.
    let letters = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM executions.dead_letters WHERE org_id = $1")
            .bind(&attacker)
            .fetch_one(&plane.db.admin)
            .await
            .unwrap()
    };
    let started = Instant::now();
    while letters().await < POISON_EVENTS as i64 {
        assert!(started.elapsed() < Duration::from_secs(120), "only {} dead letters", letters().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(letters().await, POISON_EVENTS as i64);
}
