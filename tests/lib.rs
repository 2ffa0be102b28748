//! Shared helpers of the end-to-end tests; the tests themselves are the files beside this one.

use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

/// Reads a response as `(status, body bytes)`.
pub async fn status_and_body(response: reqwest::Response) -> (u16, Vec<u8>) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a readable body").to_vec();
    (status, body)
}

/// Reads a response as `(status, JSON body)`.
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let (status, body) = status_and_body(response).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("a JSON body, got {:?}", String::from_utf8_lossy(&body)));
    (status, json)
}

/// A valid custom agent definition on `psa:ticket.escalated`, named `name`.
pub fn p1_escalation(name: &str) -> serde_json::Value {
    let mut definition: Value =
        serde_json::from_str(include_str!("../crates/domain/fixtures/p1_escalation.json")).unwrap();
    definition["name"] = name.into();
    definition
}

/// Creates and activates an agent; pauses the system agents so counts are the test's own.
pub async fn active_agent(plane: &TestPlane, org: &str, body: &Value) -> String {
    let (status, agent) = status_and_json(
        plane.as_user(Method::POST, "/api/agents", org, "admin").json(body).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{agent}");
    let id = agent["id"].as_str().unwrap().to_owned();
    let (status, _) = status_and_json(
        plane
            .as_user(Method::PUT, &format!("/api/agents/{id}"), org, "admin")
            .json(&json!({"status": "active"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    id
}

pub async fn pause_system_dispatch(plane: &TestPlane, org: &str) {
    pause_system_agent(plane, org, "agent_system_dispatch").await;
}

/// Pauses a system agent for `org`, so only the test's own agents answer its events.
pub async fn pause_system_agent(plane: &TestPlane, org: &str, agent_id: &str) {
    let pause = plane
        .as_user(Method::PUT, &format!("/api/agents/{agent_id}"), org, "admin")
        .json(&json!({"status": "paused"}));
    assert_eq!(pause.send().await.unwrap().status(), 200);
}

/// A ransomware detection on `device` from Defend, as Guardian answers it.
pub fn ransomware_detected(org: &str, device: &str, process: &str) -> oa_bus::Envelope {
    oa_bus::Envelope::new(
        org,
        "defend",
        "ransomware.detected",
        json!({"detection_id": "det_1", "confidence": 0.97, "severity": "critical", "encrypted_files": 412,
               "process": process, "client_id": "cl_acme", "client_name": "Acme Corp",
               "device": {"id": device, "hostname": "WS-01", "role": "workstation"}}),
    )
}

pub async fn executions(plane: &TestPlane, org: &str, query: &str) -> Value {
    let (status, list) = status_and_json(
        plane.as_user(Method::GET, &format!("/api/executions?{query}"), org, "viewer").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list
}

pub async fn wait_for_status(
    plane: &TestPlane,
    org: &str,
    query: &str,
    count: usize,
    status: &str,
) -> Vec<Value> {
    plane
        .eventually(20, || async {
            let list = executions(plane, org, query).await;
            let items = list["executions"].as_array().cloned().unwrap_or_default();
            (items.len() == count && items.iter().all(|e| e["status"] == status)).then_some(items)
        })
        .await
        .unwrap_or_else(|| panic!("expected {count} {status} executions for {query}"))
}
