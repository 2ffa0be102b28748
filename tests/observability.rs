//! Observability, against real parts: Prometheus scrapes the plane's admin port while Guardian
//! answers ransomware in two orgs, and what it reads moves by what happened; `promtool` finds the
//! exposition clean; and no series names an org (but an allow-listed one) or an execution.

use std::collections::BTreeSet;

use oa_domain::Scope;
use oa_e2e::{ransomware_detected, status_and_json};
use oa_testkit::TestPlane;
use oa_testkit::prometheus::{Prometheus, promtool_check_metrics};
use reqwest::Method;
use serde_json::{Value, json};

async fn msp_org(plane: &TestPlane, id: Option<&str>) -> String {
    let org = match id {
        Some(id) => plane.db.create_org_with_id(id, "pro").await.unwrap(),
        None => plane.db.create_org("pro").await.unwrap(),
    };
    let settings =
        json!({"contacts": {"on_call_sms": ["+15550100200"], "security_email": ["security@msp.example"]}});
    plane.db.set_org_settings(&org, settings).await.unwrap();
    org
}

/// Waits for the org's one pending gate and decides it.
async fn decide_the_gate(plane: &TestPlane, org: &str, decision: &str) {
    let gate = plane
        .eventually(30, || async {
            let (_, list) = plane.get_json("/api/approvals?status=pending", org).await;
            list["approvals"].as_array().and_then(|gates| gates.first().cloned())
        })
        .await
        .expect("a pending gate");
    let path = format!("/api/approvals/{}/decision", gate["id"].as_str().unwrap());
    let request = plane.as_user(Method::POST, &path, org, "admin").json(&json!({"decision": decision}));
    let (status, body) = status_and_json(request.send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

/// Waits until none of the org's executions is live; returns them all.
async fn all_finished(plane: &TestPlane, org: &str) -> Vec<Value> {
    plane
        .eventually(30, || async {
            let (_, list) = plane.get_json("/api/executions?limit=100", org).await;
            let items = list["executions"].as_array().cloned().unwrap_or_default();
            let done = !items.is_empty()
                && items
                    .iter()
                    .all(|e| matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled")));
            done.then_some(items)
        })
        .await
        .expect("every execution finishes")
}

/// Polls Prometheus until `expr` yields `expected`.
async fn reaches(plane: &TestPlane, prometheus: &Prometheus, expr: &str, expected: f64) {
    let reached = plane
        .eventually(30, || async { (prometheus.scalar(expr).await.unwrap() == Some(expected)).then_some(()) })
        .await;
    let last = prometheus.scalar(expr).await.unwrap();
    assert!(reached.is_some(), "{expr}: expected {expected}, Prometheus says {last:?}");
}

/// The label pairs of one exposition line (`name{a="x",b="y"} value`).
fn labels(line: &str) -> Vec<(String, String)> {
    let Some(start) = line.find('{') else { return Vec::new() };
    let end = line.rfind('}').unwrap_or(line.len());
    let mut pairs = Vec::new();
    let mut rest = &line[start + 1..end];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_owned();
        let value_start = eq + 2;
        let mut value_end = value_start;
        let bytes = rest.as_bytes();
        while value_end < bytes.len() && !(bytes[value_end] == b'"' && bytes[value_end - 1] != b'\\') {
            value_end += 1;
        }
        pairs.push((name, rest[value_start..value_end].to_owned()));
        rest = &rest[(value_end + 1).min(rest.len())..];
    }
    pairs
}

#[tokio::test]
async fn prometheus_sees_events_executions_steps_and_approvals_move_and_no_label_names_a_tenant() {
    let big = oa_testkit::unique("org_");
    let allow = big.clone();
    let plane = TestPlane::start_with(move |c| {
        c.telemetry.org_allowlist = vec![allow];
        c.approvals.sweep_interval_ms = 100;
    })
    .await
    .unwrap();
    let big = msp_org(&plane, Some(&big)).await;
    let small = msp_org(&plane, None).await;
    let prometheus = Prometheus::start(&[("one-agents", plane.metrics_addr.unwrap())]).await.unwrap();
    reaches(&plane, &prometheus, "sum(up)", 1.0).await;
    assert_eq!(prometheus.scalar("sum(oneagents_events_received_total)").await.unwrap().unwrap_or(0.0), 0.0);

    // One detection through the gateway, one straight onto the bus; one approved, one denied.
    let (_, key) = plane.db.create_key(&big, &[Scope::EventsPublish]).await.unwrap();
    let detection = ransomware_detected(&big, "dev_big", "svch0st.exe");
    let body = json!({"source_product": "defend", "event_type": "ransomware.detected", "payload": detection.payload});
    let publish = plane.as_key(Method::POST, "/api/events/publish", &key).json(&body);
    let (status, accepted) = status_and_json(publish.send().await.unwrap()).await;
    assert_eq!(status, 202, "{accepted}");
    plane.publish_on_bus(&ransomware_detected(&small, "dev_small", "svch0st.exe")).await.unwrap();
    decide_the_gate(&plane, &big, "approved").await;
    decide_the_gate(&plane, &small, "denied").await;
    let executions: Vec<Value> =
        [all_finished(&plane, &big).await, all_finished(&plane, &small).await].concat();
    plane.bus_settled(30).await.unwrap();

    reaches(&plane, &prometheus, "sum(oneagents_events_received_total)", 2.0).await;
    reaches(&plane, &prometheus, "sum(oneagents_events_matched_total)", 2.0).await;
    let created = executions.len() as f64;
    reaches(&plane, &prometheus, "sum(oneagents_executions_created_total)", created).await;
    reaches(&plane, &prometheus, "sum(oneagents_executions_finished_total)", created).await;
    reaches(&plane, &prometheus, "sum(oneagents_execution_duration_seconds_count)", created).await;
    reaches(&plane, &prometheus, "sum(oneagents_approvals_opened_total)", 2.0).await;
    reaches(&plane, &prometheus, r#"sum(oneagents_approvals_decided_total{channel="user"})"#, 2.0).await;
    reaches(&plane, &prometheus, r#"sum(oneagents_org_events_received_total)"#, 1.0).await;
    let models = plane.sandbox.of_kind("llm").len() as f64;
    assert!(models >= 2.0, "Guardian asks a model in each org");
    reaches(&plane, &prometheus, r#"sum(oneagents_llm_calls_total{outcome="ok"})"#, models).await;
    // Every step the runner ran was timed; each Guardian execution ran at least its assessment
    // and its gate, and the approved one isolated the device.
    let steps = prometheus.scalar("sum(oneagents_step_duration_seconds_count)").await.unwrap().unwrap();
    assert_eq!(Some(steps), prometheus.scalar("sum(oneagents_steps_total)").await.unwrap());
    let completed_steps = executions.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>();
    assert!(
        steps >= 2.0 * completed_steps.len() as f64,
        "{steps} steps for {} executions",
        completed_steps.len()
    );
    reaches(&plane, &prometheus, r#"sum(oneagents_steps_total{type="action",outcome="completed"})"#, 1.0)
        .await;
    assert!(prometheus.scalar("sum(oneagents_credits_committed_total)").await.unwrap().unwrap_or(0.0) > 0.0);
    assert!(prometheus.scalar("sum(oneagents_grpc_server_calls_total)").await.unwrap().unwrap_or(0.0) > 0.0);
    assert!(prometheus.scalar("sum(oneagents_http_requests_total)").await.unwrap().unwrap_or(0.0) > 0.0);

    // The exposition is clean by promtool's lint, every series names its role, and no label names
    // an execution or an org, but the allow-listed org in its own families.
    let text = plane.scrape().await.unwrap();
    let (code, printed) = promtool_check_metrics(&text).unwrap();
    assert_eq!(code, 0, "promtool check metrics:\n{printed}");
    let execution_ids: BTreeSet<&str> = executions.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut roles = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let pairs = labels(line);
        let role = pairs.iter().find(|(name, _)| name == "role").map(|(_, v)| v.clone());
        roles.insert(role.unwrap_or_else(|| panic!("a series without a role: {line}")));
        for (name, value) in &pairs {
            assert!(!execution_ids.contains(value.as_str()), "an execution id in a label: {line}");
            assert_ne!(value, &small, "an org that is not allow-listed in a label: {line}");
            if name == "org_id" {
                assert!(line.starts_with("oneagents_org_"), "org_id outside the per-org families: {line}");
                assert_eq!(value, &big, "{line}");
            } else {
                assert_ne!(value, &big, "an org id in a {name} label: {line}");
            }
        }
    }
    assert!(!text.contains(&small), "the small org's id appears in the exposition");
    // No alert and no graph watches a family that does not exist.
    for family in families_named_by_the_kit() {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is named by the kit but not exported");
    }
    for role in ["gateway", "worker", "agents", "catalog", "executions", "approvals", "credits", "all"] {
        assert!(roles.contains(role), "no series for role {role}: {roles:?}");
    }
}

/// The metric families the alert rules and the dashboard name.
fn families_named_by_the_kit() -> BTreeSet<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/observability");
    let mut names = BTreeSet::new();
    for file in ["alerts.yaml", "dashboard.json"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("oneagents_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_owned();
            names.insert(family);
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/observability");
    for args in [vec!["check", "rules", "alerts.yaml"], vec!["test", "rules", "alerts.test.yaml"]] {
        let output = std::process::Command::new("promtool").args(&args).current_dir(root).output().unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/dashboard.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let graphs: Vec<&Value> = panels.iter().filter(|p| p["type"] == "timeseries").collect();
    assert!(graphs.len() >= 20, "{} graphs", graphs.len());
    for graph in graphs {
        let expr = graph["targets"][0]["expr"].as_str().unwrap();
        assert!(expr.contains("oneagents_"), "{}: {expr}", graph["title"]);
    }
    assert!(families_named_by_the_kit().len() >= 30);
}
