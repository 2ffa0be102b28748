//! What the tests that run the `one-agents` binary as child processes share.
#![allow(dead_code)] // each test binary uses its own part of it

use std::process::{Child, Command, Stdio};

use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

/// Starts `one-agents serve --services <role>` against the plane's database, bus and services,
/// with `extra` environment on top.
pub fn spawn(plane: &TestPlane, role: &str, extra: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .args(["serve", "--services", role])
        .envs(oa_testkit::process_env(&plane.config))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the one-agents binary starts")
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM");
}

/// Pauses the shipped Dispatch agent for `org`, so only the test's own agents match tickets.
pub async fn pause_dispatch(plane: &TestPlane, org: &str) {
    let pause = plane
        .as_user(Method::PUT, "/api/agents/agent_system_dispatch", org, "admin")
        .json(&json!({"status": "paused"}));
    assert_eq!(pause.send().await.unwrap().status(), 200);
}

/// Creates and activates an agent, returning its id.
pub async fn active_agent(plane: &TestPlane, org: &str, definition: &Value) -> String {
    let response =
        plane.as_user(Method::POST, "/api/agents", org, "admin").json(definition).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let agent: Value = response.json().await.unwrap();
    let id = agent["id"].as_str().unwrap().to_owned();
    let activate = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), org, "admin")
        .json(&json!({"status": "active"}));
    assert_eq!(activate.send().await.unwrap().status(), 200);
    id
}

/// A plane with every role but the worker (workers are child processes a test can stop), and an
/// org whose Dispatch agent is paused.
pub async fn plane_without_worker(adjust: impl FnOnce(&mut oa_config::Config)) -> (TestPlane, String) {
    let roles = ["gateway", "agents", "catalog", "executions", "approvals", "credits"];
    let plane = TestPlane::start_roles(&roles, adjust).await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    pause_dispatch(&plane, &org).await;
    (plane, org)
}

/// An `ai_reason` step whose sandbox model answers after `delay_ms`: a step a worker is inside
/// of for that long.
pub fn slow_thinking_step(delay_ms: u64) -> Value {
    json!({"id": "think", "type": "ai_reason", "model_tier": "standard",
           "prompt": format!("Think about {{{{ event_payload.ticket_id }}}} sandbox-delay-ms:{delay_ms}"),
           "output_schema": {"type": "object", "properties": {"verdict": {"type": "string"}}}})
}

/// Publishes a `psa` ticket on the bus and waits until the sandbox has received a `kind` request
/// for it (a worker is inside that step).
pub async fn publish_ticket_until(plane: &TestPlane, org: &str, ticket_id: &str, kind: &str) {
    let event = oa_bus::Envelope::new(
        org,
        "psa",
        "ticket.created",
        json!({"ticket_id": ticket_id, "client_id": "cl_1"}),
    );
    plane.publish_on_bus(&event).await.unwrap();
    plane
        .eventually(30, || async { (!plane.sandbox.of_kind(kind).is_empty()).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("a worker reaches the {kind} step"));
}
