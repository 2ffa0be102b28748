//! Schedule triggers start one execution per tick, even with several worker replicas running the
//! scheduler at once, and stop when the agent is paused.

use std::collections::HashSet;
use std::process::{Command, Stdio};

use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_scheduled_agent_runs_once_per_tick_across_two_worker_replicas() {
    // Ticks every two seconds: far below any tier's minimum interval, lifted for this test.
    let plane =
        TestPlane::start_with(|config| config.tiers.pro.min_schedule_interval_seconds = 1).await.unwrap();
    let mut second_worker = Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .args(["serve", "--services", "worker"])
        .envs(oa_testkit::process_env(&plane.config))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the one-agents binary starts");
    let org = plane.db.create_org("pro").await.unwrap();
    let definition = json!({
        "name": "Every two seconds", "category": "operations",
        "trigger": {"type": "schedule", "cron": "*/2 * * * * *", "timezone": "Europe/Paris"},
        "steps": [{"id": "note", "type": "transform", "output": {"at": "{{ event_payload.scheduled_for }}"}}],
        "client_scope": "all"
    });
    let (status, agent) = json_of(
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&definition).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_owned();
    let set_status = |id: String, status: &'static str| {
        plane
            .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
            .json(&json!({"status": status}))
            .send()
    };
    assert_eq!(set_status(id.clone(), "active").await.unwrap().status(), 200);
    // A second agent on the same schedule stays active: its runs show the scheduler's rounds.
    let mut heartbeat = definition.clone();
    heartbeat["name"] = json!("Heartbeat");
    let (status, heartbeat) = json_of(
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&heartbeat).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{heartbeat}");
    let heartbeat = heartbeat["id"].as_str().unwrap().to_owned();
    assert_eq!(set_status(heartbeat.clone(), "active").await.unwrap().status(), 200);
    // Waits until the scheduler has started two more heartbeat runs after `since`: whatever it
    // was going to do before then has been done.
    let two_rounds_after = |since: chrono::DateTime<chrono::Utc>| {
        let (plane, org, heartbeat) = (&plane, &org, &heartbeat);
        async move {
            plane
                .eventually(30, || async {
                    let (_, list) =
                        plane.get_json(&format!("/api/executions?agent_id={heartbeat}"), org).await;
                    let later = list["executions"]
                        .as_array()?
                        .iter()
                        .filter_map(|e| {
                            e["created_at"].as_str()?.parse::<chrono::DateTime<chrono::Utc>>().ok()
                        })
                        .filter(|created| *created > since)
                        .count();
                    (later >= 2).then_some(())
                })
                .await
                .expect("the scheduler goes on running the heartbeat agent")
        }
    };

    let runs = plane
        .eventually(30, || async {
            let (_, list) =
                plane.get_json(&format!("/api/executions?agent_id={id}&status=completed"), &org).await;
            let items = list["executions"].as_array().cloned().unwrap_or_default();
            (items.len() >= 3).then_some(items)
        })
        .await
        .expect("three scheduled runs");
    assert_eq!(set_status(id.clone(), "paused").await.unwrap().status(), 200);
    let paused_at = chrono::Utc::now();
    second_worker.kill().ok();
    second_worker.wait().ok();

    let mut ticks = HashSet::new();
    for run in &runs {
        let (_, detail) =
            plane.get_json(&format!("/api/executions/{}", run["id"].as_str().unwrap()), &org).await;
        assert_eq!(detail["trigger_event"]["source_product"], "schedule");
        assert!(
            ticks.insert(detail["trigger_event"]["id"].as_str().unwrap().to_owned()),
            "one execution per tick"
        );
    }
    // Paused: the count settles. Each read waits for the scheduler's next rounds, not a clock.
    two_rounds_after(paused_at).await;
    let (_, before) = plane.get_json(&format!("/api/executions?agent_id={id}"), &org).await;
    two_rounds_after(chrono::Utc::now()).await;
    let (_, after) = plane.get_json(&format!("/api/executions?agent_id={id}"), &org).await;
    assert_eq!(before["total"], after["total"], "a paused agent is not scheduled");
}
