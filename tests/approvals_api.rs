//! Approvals: the seeded Guardian agent stops at a human gate; approving isolates the device,
//! denying ends the execution without it, and a gate left alone follows its `on_timeout`. Exactly
//! one decision wins, only allowed roles decide, other orgs see nothing, gates survive a restart,
//! and a signed link decides once.

use oa_bus::Envelope;
use oa_domain::Scope;
use oa_e2e::status_and_json;
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

const ON_CALL: &str = "+15550100200";

fn ransomware(org: &str, device: &str) -> Envelope {
    Envelope::new(
        org,
        "defend",
        "ransomware.detected",
        json!({"detection_id": format!("det_{device}"), "confidence": 0.97, "severity": "critical",
               "encrypted_files": 412, "process": "svch0st.exe", "client_id": format!("cl_{device}"),
               "client_name": "Acme Corp",
               "device": {"id": device, "hostname": "WORKSTATION-01", "role": "workstation"}}),
    )
}

/// An org whose settings name its on-call phone and security mailbox, as Guardian needs.
async fn msp_org(plane: &TestPlane) -> String {
    let org = plane.db.create_org("pro").await.unwrap();
    let settings =
        json!({"contacts": {"on_call_sms": ["+15550100200"], "security_email": ["security@msp.example"]}});
    plane.db.set_org_settings(&org, settings).await.unwrap();
    org
}

async fn start() -> TestPlane {
    TestPlane::start_with(|c| c.approvals.sweep_interval_ms = 100).await.unwrap()
}

async fn get(plane: &TestPlane, org: &str, path: &str) -> (u16, Value) {
    plane.get_json(path, org).await
}

async fn decide(plane: &TestPlane, org: &str, role: &str, id: &str, decision: &str) -> (u16, Value) {
    let request = plane
        .as_user(Method::POST, &format!("/api/approvals/{id}/decision"), org, role)
        .json(&json!({"decision": decision, "note": format!("{decision} by the on-call {role}")}));
    status_and_json(request.send().await.unwrap()).await
}

/// Waits until the org has `count` pending gates; returns them, newest first.
async fn pending(plane: &TestPlane, org: &str, count: usize) -> Vec<Value> {
    plane
        .eventually(30, || async {
            let (_, list) = get(plane, org, "/api/approvals?status=pending").await;
            let gates = list["approvals"].as_array().cloned().unwrap_or_default();
            (gates.len() == count).then_some(gates)
        })
        .await
        .unwrap_or_else(|| panic!("{count} pending gates"))
}

/// Waits until the execution reaches `status`; returns it.
async fn execution_in(plane: &TestPlane, org: &str, id: &str, status: &str) -> Value {
    plane
        .eventually(30, || async {
            let (_, execution) = get(plane, org, &format!("/api/executions/{id}")).await;
            (execution["status"] == status).then_some(execution)
        })
        .await
        .unwrap_or_else(|| panic!("execution {id} reaches {status}"))
}

fn step<'a>(execution: &'a Value, id: &str) -> &'a Value {
    execution["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == id).unwrap()
}

/// Publishes a detection and waits for Guardian's gate: (gate, execution id).
async fn guardian_gate(plane: &TestPlane, org: &str, device: &str, already: usize) -> (Value, String) {
    plane.publish_on_bus(&ransomware(org, device)).await.unwrap();
    let gates = pending(plane, org, already + 1).await;
    let gate = gates.into_iter().find(|g| g["message"].as_str().is_some()).unwrap();
    let execution_id = gate["execution_id"].as_str().unwrap().to_owned();
    execution_in(plane, org, &execution_id, "waiting_approval").await;
    (gate, execution_id)
}

/// Clones Guardian into an active custom agent after `edit` changed its clone's fields (as a PUT
/// body), and pauses the system Guardian so only the clone answers. Returns the clone's id and the
/// clone as created.
async fn guardian_clone(plane: &TestPlane, org: &str, edit: impl FnOnce(&mut Value)) -> (String, Value) {
    let clone = plane.as_user(Method::POST, "/api/agents/agent_system_guardian/clone", org, "admin");
    let (status, clone) = status_and_json(clone.send().await.unwrap()).await;
    assert_eq!(status, 201, "{clone}");
    let id = clone["id"].as_str().unwrap().to_owned();
    let mut update = json!({"steps": clone["steps"], "status": "active"});
    edit(&mut update);
    let put = plane.as_user(Method::PUT, &format!("/api/agents/{id}"), org, "admin").json(&update);
    let (status, body) = status_and_json(put.send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let pause = plane
        .as_user(Method::PUT, "/api/agents/agent_system_guardian", org, "admin")
        .json(&json!({"status": "paused"}));
    assert_eq!(pause.send().await.unwrap().status(), 200);
    (id, clone)
}

fn isolations(plane: &TestPlane, device: &str) -> usize {
    plane.sandbox.of_kind("action").iter().filter(|a| a.body["device_id"] == device).count()
}

#[tokio::test]
async fn guardian_waits_for_a_human_then_isolates_the_device_once_approved() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_ws01", 0).await;
    assert_eq!(gate["agent_id"], "agent_system_guardian");
    assert_eq!(gate["step_id"], "confirm_isolation");
    assert_eq!(gate["status"], "pending");
    assert_eq!(
        gate["message"],
        "Confirm device isolation for WORKSTATION-01 (Client: Acme Corp). Ransomware confidence: 0.97"
    );
    assert!(gate["id"].as_str().unwrap().starts_with("appr_"));
    let expires = chrono::DateTime::parse_from_rfc3339(gate["expires_at"].as_str().unwrap()).unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(gate["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_minutes(), 120, "expires_in 2h");

    // While it waits, the trace shows the open gate and nothing was isolated.
    let (_, execution) = get(&plane, &org, &format!("/api/executions/{execution_id}")).await;
    assert_eq!(step(&execution, "assess_threat")["status"], "completed");
    assert_eq!(step(&execution, "confirm_isolation")["status"], "running");
    assert_eq!(step(&execution, "confirm_isolation")["output"]["approval_id"], gate["id"]);
    assert_eq!(step(&execution, "isolate_device")["status"], "pending");
    assert_eq!(isolations(&plane, "dev_ws01"), 0);

    let id = gate["id"].as_str().unwrap();
    let (status, decided) = decide(&plane, &org, "technician", id, "approved").await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], "user:user-1");
    assert_eq!(decided["note"], "approved by the on-call technician");
    assert!(decided["decided_at"].as_str().is_some());

    let execution = execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(step(&execution, "confirm_isolation")["status"], "completed");
    assert_eq!(step(&execution, "confirm_isolation")["output"]["decision"], "approved");
    assert_eq!(step(&execution, "isolate_device")["status"], "completed");
    assert_eq!(step(&execution, "notify_security")["status"], "completed");
    assert_eq!(isolations(&plane, "dev_ws01"), 1, "the device is isolated once");

    // The audit: opened, then approved by the technician.
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    let actions: Vec<_> = record["history"].as_array().unwrap().iter().map(|h| h["action"].clone()).collect();
    assert_eq!(actions, vec![json!("opened"), json!("approved")]);
    assert_eq!(record["history"][1]["principal_type"], "user");
    assert_eq!(record["history"][1]["actor"], "user:user-1");
    let (_, list) = get(&plane, &org, "/api/approvals?status=approved").await;
    assert_eq!(list["total"], 1);
    let (_, list) = get(&plane, &org, "/api/approvals?status=pending").await;
    assert_eq!(list["total"], 0);

    // The audit is append-only, even for the database's owner.
    let tampered =
        sqlx::query("UPDATE approvals.audit SET actor = 'someone else'").execute(&plane.db.admin).await;
    assert!(tampered.is_err());
}

#[tokio::test]
async fn a_denied_gate_ends_the_execution_without_isolating() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_ws02", 0).await;
    let (status, decided) = decide(&plane, &org, "admin", gate["id"].as_str().unwrap(), "denied").await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["status"], "denied");
    let execution = execution_in(&plane, &org, &execution_id, "failed").await;
    assert_eq!(execution["error"]["code"], "approval_denied");
    assert_eq!(step(&execution, "confirm_isolation")["status"], "failed");
    assert!(
        step(&execution, "confirm_isolation")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("denied by user:user-1")
    );
    assert_eq!(step(&execution, "isolate_device")["status"], "skipped");
    assert_eq!(isolations(&plane, "dev_ws02"), 0);
}

/// Moves a gate's expiry to now: the clock of a gate left alone, without waiting two hours.
async fn age(plane: &TestPlane, id: &str) {
    sqlx::query("UPDATE approvals.gates SET expires_at = now() WHERE id = $1")
        .bind(id)
        .execute(&plane.db.admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gate_left_alone_expires_and_follows_on_timeout() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    // Guardian: on_timeout deny.
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_ws03", 0).await;
    let id = gate["id"].as_str().unwrap();
    age(&plane, id).await;
    let execution = execution_in(&plane, &org, &execution_id, "failed").await;
    assert_eq!(execution["error"]["code"], "approval_expired");
    assert_eq!(isolations(&plane, "dev_ws03"), 0);
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!(record["status"], "expired");
    assert_eq!(record["decided_by"], "system:timeout");
    assert_eq!(record["history"][1]["action"], "expired");
    let (status, conflict) = decide(&plane, &org, "admin", id, "approved").await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"], "conflict");
    assert_eq!(conflict["details"]["status"], "expired");

    // A gate that approves itself on timeout cannot stand before a destructive action.
    let (id, clone) = guardian_clone(&plane, &org, |_| {}).await;
    let mut steps = clone["steps"].clone();
    steps[1]["on_timeout"] = json!("approve");
    let put = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"steps": steps}));
    let (status, refused) = status_and_json(put.send().await.unwrap()).await;
    assert_eq!((status, refused["details"][0]["path"].as_str()), (400, Some("steps[2].action")), "{refused}");
    let delete = plane.as_user(Method::DELETE, &format!("/api/agents/{id}"), &org, "admin");
    assert_eq!(delete.send().await.unwrap().status(), 204);

    // A clone that approves on timeout goes on (to a ticket, not an isolation); one that escalates
    // hands the gate to admins with a new expiry, and records it in the trace.
    for (on_timeout, device) in [("approve", "dev_ws04"), ("escalate", "dev_ws05")] {
        guardian_clone(&plane, &org, |update| {
            update["steps"][1]["on_timeout"] = json!(on_timeout);
            if on_timeout == "escalate" {
                update["steps"][1]["escalate_to"] = json!("admin");
            } else {
                update["steps"][2] = json!({"id": "isolate_device", "type": "action", "action": "psa.create_ticket",
                    "params": {"subject": "Isolate {{ event_payload.device.id }}"}});
            }
            update["trigger"] = json!({"type": "bus_event", "source_product": "defend",
                "event_type": "ransomware.detected",
                "filters": [{"field": "client_id", "operator": "eq", "value": format!("cl_{device}")}]});
        })
        .await;
    }

    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_ws04", 0).await;
    age(&plane, gate["id"].as_str().unwrap()).await;
    let execution = execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(step(&execution, "confirm_isolation")["output"]["decision"], "approved");
    assert_eq!(step(&execution, "confirm_isolation")["output"]["status"], "expired");
    let tickets = plane.sandbox.of_kind("action");
    assert_eq!(tickets.iter().filter(|a| a.body["subject"] == "Isolate dev_ws04").count(), 1);
    assert_eq!(isolations(&plane, "dev_ws04"), 0);

    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_ws05", 0).await;
    let id = gate["id"].as_str().unwrap().to_owned();
    age(&plane, &id).await;
    let escalated = plane
        .eventually(30, || async {
            let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
            (record["escalated_at"].is_string()).then_some(record)
        })
        .await
        .expect("the gate is escalated");
    assert_eq!(escalated["status"], "pending");
    assert_eq!(escalated["approvers"], json!(["admin"]));
    let new_expiry = chrono::DateTime::parse_from_rfc3339(escalated["expires_at"].as_str().unwrap()).unwrap();
    assert!(new_expiry > chrono::Utc::now() + chrono::Duration::minutes(119), "a fresh 2h for the admins");
    let traced = plane
        .eventually(30, || async {
            let (_, execution) = get(&plane, &org, &format!("/api/executions/{execution_id}")).await;
            let output = step(&execution, "confirm_isolation")["output"].clone();
            output["escalated_at"].is_string().then_some(output)
        })
        .await
        .expect("the escalation is in the trace");
    assert_eq!(traced["approvers"], json!(["admin"]));
    let (status, body) = decide(&plane, &org, "technician", &id, "approved").await;
    assert_eq!(status, 403, "only admins decide an escalated gate: {body}");
    let (status, _) = decide(&plane, &org, "admin", &id, "approved").await;
    assert_eq!(status, 200);
    execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(isolations(&plane, "dev_ws05"), 1);
}

#[tokio::test]
async fn fifty_concurrent_decisions_on_one_gate_have_exactly_one_winner() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_race", 0).await;
    let id = gate["id"].as_str().unwrap();
    let decisions = (0..50).map(|i| {
        let decision = if i % 2 == 0 { "approved" } else { "denied" };
        let role = if i % 3 == 0 { "admin" } else { "technician" };
        decide(&plane, &org, role, id, decision)
    });
    let results = futures::future::join_all(decisions).await;
    let winners: Vec<_> = results.iter().filter(|(status, _)| *status == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let winner = &winners[0].1;
    for (status, body) in results.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["error"], "conflict");
        assert_eq!(body["details"]["status"], winner["status"], "the loser is told the decision");
    }
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!(record["history"].as_array().unwrap().len(), 2, "one opened, one decision");
    let end = if winner["status"] == "approved" { "completed" } else { "failed" };
    execution_in(&plane, &org, &execution_id, end).await;
    assert_eq!(isolations(&plane, "dev_race"), usize::from(end == "completed"));
}

#[tokio::test]
async fn only_allowed_roles_and_keys_decide_and_other_orgs_see_nothing() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let other = msp_org(&plane).await;
    let (gate, _) = guardian_gate(&plane, &org, "dev_roles", 0).await;
    let id = gate["id"].as_str().unwrap();

    let (status, body) = decide(&plane, &org, "viewer", id, "approved").await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    // Another org's gate is exactly a missing one.
    let (status, foreign) = decide(&plane, &other, "admin", id, "approved").await;
    let (missing_status, missing) = decide(&plane, &other, "admin", "appr_01MISSING", "approved").await;
    assert_eq!((status, missing_status), (404, 404));
    assert_eq!(foreign["error"], "approval_not_found");
    assert_eq!(
        foreign["message"].as_str().unwrap().replace(id, "X"),
        missing["message"].as_str().unwrap().replace("appr_01MISSING", "X")
    );
    let (status, _) = get(&plane, &other, &format!("/api/approvals/{id}")).await;
    assert_eq!(status, 404);
    let (_, list) = get(&plane, &other, "/api/approvals").await;
    assert_eq!(list["total"], 0);

    // Bad input: the API's error body, nothing decided.
    let (status, body) = decide(&plane, &org, "admin", id, "maybe").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body) = get(&plane, &org, "/api/approvals?status=open").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));

    // Keys: approvals:read may look, only approvals:decide may decide.
    let (_, reader) = plane.db.create_key(&org, &[Scope::ApprovalsRead]).await.unwrap();
    let (_, decider) = plane.db.create_key(&org, &[Scope::ApprovalsDecide]).await.unwrap();
    let path = format!("/api/approvals/{id}/decision");
    let body = json!({"decision": "approved"});
    let response = plane.as_key(Method::POST, &path, &reader).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = plane.as_key(Method::GET, "/api/approvals?status=pending", &reader).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, decided) =
        status_and_json(plane.as_key(Method::POST, &path, &decider).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{decided}");
    assert!(decided["decided_by"].as_str().unwrap().starts_with("key:"));
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!(record["history"][1]["principal_type"], "integration_key");
}

#[tokio::test]
async fn cancelling_denies_the_gate_and_deleting_an_agent_cancels_its_executions() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_cancel", 0).await;
    let cancel =
        plane.as_user(Method::POST, &format!("/api/executions/{execution_id}/cancel"), &org, "technician");
    let (status, cancelled) = status_and_json(cancel.send().await.unwrap()).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let id = gate["id"].as_str().unwrap();
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!(record["status"], "denied");
    assert_eq!(record["decided_via"], "cancel");
    let (status, conflict) = decide(&plane, &org, "admin", id, "approved").await;
    assert_eq!(status, 409);
    assert!(conflict["message"].as_str().unwrap().contains("cancelled"), "{conflict}");

    // A custom agent waiting at its gate is cancelled when the agent is deleted.
    let (clone_id, _) = guardian_clone(&plane, &org, |_| {}).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_delete", 0).await;
    assert_eq!(gate["agent_id"], clone_id);
    let delete = plane.as_user(Method::DELETE, &format!("/api/agents/{clone_id}"), &org, "admin");
    assert_eq!(delete.send().await.unwrap().status(), 204);
    let (_, execution) = get(&plane, &org, &format!("/api/executions/{execution_id}")).await;
    assert_eq!(execution["status"], "cancelled");
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{}", gate["id"].as_str().unwrap())).await;
    assert_eq!(record["status"], "denied");
    assert_eq!(isolations(&plane, "dev_delete"), 0);
}

#[tokio::test]
async fn a_gate_survives_a_restart_of_every_service_and_is_still_decidable() {
    let mut plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_restart", 0).await;
    plane.restart().await.unwrap();
    let id = gate["id"].as_str().unwrap();
    let (status, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!((status, record["status"].as_str()), (200, Some("pending")));
    let (status, _) = decide(&plane, &org, "admin", id, "approved").await;
    assert_eq!(status, 200);
    execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(isolations(&plane, "dev_restart"), 1);
}

/// The link the on-call phone received for `gate`.
fn link_for(plane: &TestPlane, gate: &str) -> String {
    let texts = plane.sandbox.of_kind("sms");
    let text = texts
        .iter()
        .filter(|m| m.target == ON_CALL)
        .map(|m| m.body["body"].as_str().unwrap_or_default().to_owned())
        .find(|body| body.contains(gate))
        .unwrap_or_else(|| panic!("an SMS with a link to {gate}: {texts:?}"));
    let start = text.find("http").unwrap();
    text[start..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn a_signed_link_decides_once_only_for_its_gate_and_not_after_it_expires() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (first, first_execution) = guardian_gate(&plane, &org, "dev_link1", 0).await;
    let (second, _) = guardian_gate(&plane, &org, "dev_link2", 1).await;
    let first_id = first["id"].as_str().unwrap();
    let second_id = second["id"].as_str().unwrap();
    // Newest first, a page at a time.
    let (_, page) = get(&plane, &org, "/api/approvals?limit=1").await;
    assert_eq!((page["total"].as_u64(), page["approvals"][0]["id"].as_str()), (Some(2), Some(second_id)));
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = get(&plane, &org, &format!("/api/approvals?limit=1&cursor={cursor}")).await;
    assert_eq!(page["approvals"][0]["id"].as_str(), Some(first_id));
    assert!(page["next_cursor"].is_null());

    let link = link_for(&plane, first_id);
    let path = &link[link.find("/approvals/").unwrap()..];
    assert_eq!(
        plane.sandbox.of_kind("sms").iter().filter(|m| m.target == ON_CALL).count(),
        2,
        "one text per gate"
    );

    // Opening the link (a phone, or a mail scanner) shows the gate and consumes nothing.
    let page = plane.http.get(plane.url(path)).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("WORKSTATION-01") && html.contains("Approve") && html.contains("Deny"), "{html}");

    // The same token on another gate is refused.
    let token = &path[path.find("token=").unwrap() + 6..];
    let foreign = plane
        .http
        .post(plane.url(&format!("/approvals/{second_id}/link?token={token}")))
        .json(&json!({"decision": "approved"}));
    let (status, body) = status_and_json(foreign.send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    let tampered = plane.http.post(plane.url(&format!("{path}x"))).json(&json!({"decision": "approved"}));
    assert_eq!(tampered.send().await.unwrap().status(), 403);

    // A phone posts the form: decided by the recipient, through a signed link.
    let form = plane
        .http
        .post(plane.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=approved&note=isolate+it");
    let response = form.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("approved"));
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{first_id}")).await;
    assert_eq!(record["status"], "approved");
    assert_eq!(record["decided_by"], ON_CALL);
    assert_eq!(record["decided_via"], "signed_link");
    assert_eq!(record["history"][1]["principal_type"], "signed_link");
    execution_in(&plane, &org, &first_execution, "completed").await;
    let (_, pending) = get(&plane, &org, "/api/approvals").await;
    let (_, all) = get(&plane, &org, "/api/approvals?status=all").await;
    assert_eq!((pending["total"].as_u64(), all["total"].as_u64()), (Some(1), Some(2)), "pending by default");

    // Once only.
    let again = plane.http.post(plane.url(path)).json(&json!({"decision": "denied"}));
    let (status, body) = status_and_json(again.send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");
}

#[tokio::test]
async fn an_expired_link_decides_nothing() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, _) = guardian_gate(&plane, &org, "dev_late", 0).await;
    let id = gate["id"].as_str().unwrap();
    let link = link_for(&plane, id);
    assert!(link.contains("/link?token="), "{link}");
    // The same link, as its recipient holds it once its time is up: signed by the plane, for this
    // gate and recipient, expired a minute ago (the test sets the clock instead of waiting on it).
    let expired_at = (chrono::Utc::now().timestamp() - 60) as u64;
    let token =
        oa_auth::links::mint(&plane.config.approvals.link_secret, &org, id, ON_CALL, expired_at).unwrap();
    let path = format!("/approvals/{id}/link?token={token}");
    let late = plane.http.post(plane.url(&path)).json(&json!({"decision": "approved"}));
    let (status, body) = status_and_json(late.send().await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
    let (_, record) = get(&plane, &org, &format!("/api/approvals/{id}")).await;
    assert_eq!(record["status"], "pending", "the gate is still open to signed-in approvers");
}

#[tokio::test]
async fn a_denied_gate_with_on_deny_goes_on_at_that_step() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (clone_id, clone) =
        guardian_clone(&plane, &org, |update| update["steps"][1]["on_deny"] = json!("notify_security")).await;
    let mut steps = clone["steps"].clone();

    // on_deny must name a later step.
    steps[1]["on_deny"] = json!("assess_threat");
    let bad = plane
        .as_user(Method::PUT, &format!("/api/agents/{clone_id}"), &org, "admin")
        .json(&json!({"steps": steps}));
    let (status, body) = status_and_json(bad.send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_agent_config")), "{body}");
    assert!(body["details"].to_string().contains("steps[1].on_deny"), "{body}");

    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_branch", 0).await;
    let (status, _) = decide(&plane, &org, "technician", gate["id"].as_str().unwrap(), "denied").await;
    assert_eq!(status, 200);
    let execution = execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(step(&execution, "confirm_isolation")["status"], "completed");
    assert_eq!(step(&execution, "confirm_isolation")["output"]["decision"], "denied");
    assert_eq!(step(&execution, "isolate_device")["status"], "skipped");
    assert_eq!(step(&execution, "notify_security")["status"], "completed");
    assert_eq!(isolations(&plane, "dev_branch"), 0);
}

#[tokio::test]
async fn replicas_sweeping_together_expire_a_gate_once() {
    // The plane's own sweeper sleeps; four replicas' sweeps race on the expired gate.
    let plane = TestPlane::start_with(|c| c.approvals.sweep_interval_ms = 3_600_000).await.unwrap();
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_sweep", 0).await;
    let id = gate["id"].as_str().unwrap();
    age(&plane, id).await;
    let nats = oa_bus::connect(&plane.config.nats).await.unwrap();
    let shared = oa_approvals::Shared::new(plane.db.app.clone(), nats, &plane.config);
    let sweeps = (0..4).map(|_| oa_approvals::sweeper::sweep(&shared));
    let handled: usize = futures::future::join_all(sweeps).await.into_iter().map(Result::unwrap).sum();
    assert_eq!(handled, 1);
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM approvals.audit WHERE approval_id = $1 AND action = 'expired'",
    )
    .bind(id)
    .fetch_one(&plane.db.admin)
    .await
    .unwrap();
    assert_eq!(expired, 1);
    execution_in(&plane, &org, &execution_id, "failed").await;
}

#[tokio::test]
async fn a_decision_committed_but_never_published_is_published_by_the_sweeper() {
    let plane = start().await;
    let org = msp_org(&plane).await;
    let (gate, execution_id) = guardian_gate(&plane, &org, "dev_outbox", 0).await;
    // As if the service died between committing the decision and publishing it.
    sqlx::query(
        "UPDATE approvals.gates SET status = 'approved', outcome = 'approved', decided_by = 'user:u-9',
                decided_via = 'user', decided_at = now(), version = version + 1,
                updated_at = now() - interval '1 minute'
         WHERE id = $1",
    )
    .bind(gate["id"].as_str().unwrap())
    .execute(&plane.db.admin)
    .await
    .unwrap();
    execution_in(&plane, &org, &execution_id, "completed").await;
    assert_eq!(isolations(&plane, "dev_outbox"), 1);
    let lagging: i64 =
        sqlx::query_scalar("SELECT count(*) FROM approvals.gates WHERE published_version < version")
            .fetch_one(&plane.db.admin)
            .await
            .unwrap();
    assert_eq!(lagging, 0);
}
