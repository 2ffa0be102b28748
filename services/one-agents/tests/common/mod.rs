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
