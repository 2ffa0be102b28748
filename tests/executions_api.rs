//! Events to executions: an event on the bus or through the API runs the matching agents, every
//! step is traced, side effects reach the sandbox once, and executions are listed, cancelled and
//! retried through the API.

use oa_bus::Envelope;
use oa_domain::Scope;
use oa_e2e::{active_agent, executions, pause_system_dispatch, status_and_json, wait_for_status};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

fn triage_agent(name: &str, scope: Value) -> Value {
    json!({
        "name": name,
        "description": "Classifies P1 tickets, tells on-call and updates the ticket",
        "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created",
                    "filters": [{"field": "priority", "operator": "eq", "value": "p1"}]},
        "steps": [
            {"id": "classify", "type": "ai_reason", "model_tier": "quick",
             "prompt": "Classify ticket {{ event_payload.ticket_id }}: {{ event_payload.subject }}",
             "output_schema": {"type": "object", "required": ["priority", "summary"],
                               "properties": {"priority": {"type": "string", "enum": ["p1", "p2"]}, "summary": {"type": "string"}}}},
            {"id": "shape", "type": "transform", "output": {"text": "{{ event_payload.ticket_id }} is {{ steps.classify.output.priority }}"}},
            {"id": "page", "type": "notification", "channel": "sms", "recipients": ["+15550001111"], "body": "{{ steps.shape.output.text }}"},
            {"id": "update", "type": "action", "action": "psa.update_ticket",
             "params": {"ticket_id": "{{ event_payload.ticket_id }}", "priority": "{{ steps.classify.output.priority }}"}},
            {"id": "never", "type": "notification", "channel": "sms", "recipients": ["+15550002222"], "body": "skipped",
             "when": "steps.classify.output.priority == 'p2'"}
        ],
        "conflict_behavior": "additive",
        "client_scope": scope
    })
}

fn ticket(org: &str, ticket_id: &str, priority: &str, client_id: &str) -> Envelope {
    Envelope::new(
        org,
        "psa",
        "ticket.created",
        json!({
            "ticket_id": ticket_id, "priority": priority, "subject": "Server room on fire", "client_id": client_id
        }),
    )
}

#[tokio::test]
async fn a_ticket_event_from_the_bus_and_from_the_api_runs_the_matching_agent_with_a_full_trace() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    pause_system_dispatch(&plane, &org).await;
    let agent = active_agent(&plane, &org, &triage_agent("Triage", json!("all"))).await;
    let scoped = active_agent(&plane, &org, &triage_agent("Other client only", json!(["cl_other"]))).await;

    // Events that must start nothing: a filter that fails, and (for `scoped`) a client out of scope.
    let p2 = ticket(&org, "tkt_p2", "p2", "cl_acme");
    plane.publish_on_bus(&p2).await.unwrap();
    let event = ticket(&org, "tkt_bus", "p1", "cl_acme");
    plane.publish_on_bus(&event).await.unwrap();

    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "completed").await;
    let id = runs[0]["id"].as_str().unwrap();
    let (status, detail) = plane.get_json(&format!("/api/executions/{id}"), &org).await;
    assert_eq!(status, 200);
    assert_eq!(detail["trigger_event"]["id"], event.id.as_str());
    assert_eq!(detail["trigger_event"]["payload"]["ticket_id"], "tkt_bus");
    let steps = detail["steps"].as_array().unwrap();
    let statuses: Vec<&str> = steps.iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["completed", "completed", "completed", "completed", "skipped"]);
    assert_eq!(steps[0]["step_type"], "ai_reason");
    assert_eq!(steps[0]["output"], json!({"priority": "p1", "summary": "sandbox summary"}));
    assert_eq!(steps[0]["credits_used"], 1);
    assert_eq!(steps[1]["output"], json!({"text": "tkt_bus is p1"}));
    assert!(steps.iter().take(4).all(|s| s["duration_ms"].is_number()
        && s["started_at"].is_string()
        && s["completed_at"].is_string()));
    assert_eq!(detail["credits_used"], 1);

    let sms = plane.sandbox.of_kind("sms");
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].target, "+15550001111");
    assert_eq!(sms[0].body["body"], "tkt_bus is p1");
    let actions = plane.sandbox.of_kind("action");
    assert_eq!((actions.len(), actions[0].target.as_str()), (1, "psa.update_ticket"));
    assert_eq!(actions[0].body, json!({"ticket_id": "tkt_bus", "priority": "p1", "_org_id": org}));
    assert!(!plane.sandbox.of_kind("llm").is_empty());

    // The same through the API, with a product's events:publish key.
    let (_, key) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
    let body = json!({"source_product": "psa", "event_type": "ticket.created",
                      "payload": {"ticket_id": "tkt_api", "priority": "p1", "subject": "VPN down", "client_id": "cl_acme"}});
    let (status, accepted) = status_and_json(
        plane.as_key(Method::POST, "/api/events/publish", &key).json(&body).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert!(accepted["id"].as_str().unwrap().starts_with("evt_"));
    wait_for_status(&plane, &org, &format!("agent_id={agent}"), 2, "completed").await;
    assert_eq!(plane.sandbox.of_kind("sms").len(), 2);

    // Nothing ran for the filtered-out event, the out-of-scope agent, or the paused system agent.
    assert_eq!(executions(&plane, &org, &format!("agent_id={scoped}")).await["total"], 0);
    assert_eq!(executions(&plane, &org, "agent_id=agent_system_dispatch").await["total"], 0);
    assert_eq!(executions(&plane, &org, "").await["total"], 2);
    let (_, stats) = plane.get_json(&format!("/api/agents/{agent}"), &org).await;
    let stats = plane
        .eventually(5, || async {
            let (_, a) = plane.get_json(&format!("/api/agents/{agent}"), &org).await;
            (a["stats"]["total_runs"] == 2).then_some(a["stats"].clone())
        })
        .await
        .unwrap_or(stats["stats"].clone());
    assert_eq!((stats["total_runs"].as_i64(), stats["success_rate"].as_f64()), (Some(2), Some(1.0)));

    // A key without events:publish cannot publish; a bad body is 400.
    let (_, reader) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    assert_eq!(
        plane.as_key(Method::POST, "/api/events/publish", &reader).json(&body).send().await.unwrap().status(),
        403
    );
    let (status, _) = status_and_json(
        plane
            .as_key(Method::POST, "/api/events/publish", &key)
            .json(&json!({"source_product": "psa"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn redelivery_and_republish_create_exactly_one_execution() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    pause_system_dispatch(&plane, &org).await;
    let agent = active_agent(&plane, &org, &triage_agent("Once", json!("all"))).await;
    let event = ticket(&org, "tkt_once", "p1", "cl_acme");
    plane.publish_on_bus(&event).await.unwrap();
    plane.publish_on_bus(&event).await.unwrap();
    // The same event under another message id gets past JetStream's dedup: the unique key holds.
    plane
        .publish_raw_on_bus(&org, "psa", "ticket.created", serde_json::to_vec(&event).unwrap())
        .await
        .unwrap();
    let (_, key) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
    let republish = json!({"id": event.id, "source_product": "psa", "event_type": "ticket.created", "payload": event.payload});
    assert_eq!(
        plane
            .as_key(Method::POST, "/api/events/publish", &key)
            .json(&republish)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );

    wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "completed").await;
    plane.bus_settled(30).await.unwrap();
    assert_eq!(executions(&plane, &org, "").await["total"], 1);
    assert_eq!(plane.sandbox.of_kind("sms").len(), 1);
}

#[tokio::test]
async fn cancel_and_retry_follow_the_state_rules_and_other_orgs_get_404() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let other = plane.db.create_org("pro").await.unwrap();
    pause_system_dispatch(&plane, &org).await;
    let mut gated = triage_agent("Gated", json!("all"));
    gated["steps"] = json!([
        {"id": "gate", "type": "approval", "message": "Escalate {{ event_payload.ticket_id }}?", "expires_in": "1h"},
        {"id": "page", "type": "notification", "channel": "sms", "recipients": ["+15550003333"], "body": "approved"}
    ]);
    let agent = active_agent(&plane, &org, &gated).await;
    plane.publish_on_bus(&ticket(&org, "tkt_gate", "p1", "cl_acme")).await.unwrap();
    let waiting = wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "waiting_approval").await;
    let id = waiting[0]["id"].as_str().unwrap().to_owned();

    // Another org cannot see, cancel or retry it: 404, the body of a missing id.
    let missing = "exec_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    for (method, path) in [
        (Method::GET, "/api/executions/{}"),
        (Method::POST, "/api/executions/{}/cancel"),
        (Method::POST, "/api/executions/{}/retry"),
    ] {
        let (status, foreign) = status_and_json(
            plane.as_user(method.clone(), &path.replace("{}", &id), &other, "admin").send().await.unwrap(),
        )
        .await;
        let (_, absent) = status_and_json(
            plane
                .as_user(method.clone(), &path.replace("{}", missing), &other, "admin")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, foreign["error"].as_str()), (404, Some("execution_not_found")), "{path}");
        assert_eq!(foreign.to_string(), absent.to_string().replace(missing, &id), "{path}");
    }

    // Retry is for failed or cancelled executions only; viewers control nothing.
    let (status, error) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{id}/retry"), &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (409, Some("conflict")));
    let (status, _) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{id}/cancel"), &org, "viewer")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);

    let (status, cancelled) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{id}/cancel"), &org, "technician")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")));
    let step_statuses: Vec<&str> =
        cancelled["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(step_statuses, vec!["skipped", "skipped"]);
    let (status, error) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{id}/cancel"), &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (409, Some("conflict")));

    let (status, retry) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{id}/retry"), &org, "technician")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{retry}");
    assert_eq!(retry["retry_of"], id.as_str());
    assert_eq!(retry["trigger_event"], cancelled["trigger_event"]);
    let retried = retry["id"].as_str().unwrap().to_owned();
    plane
        .eventually(20, || async {
            let (_, e) = status_and_json(
                plane
                    .as_user(Method::GET, &format!("/api/executions/{retried}"), &org, "admin")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            (e["status"] == "waiting_approval").then_some(())
        })
        .await
        .expect("the retry runs from the start up to the gate again");
    assert_eq!(plane.sandbox.of_kind("sms").len(), 0, "nothing ran past the gate");
}

#[tokio::test]
async fn cursor_pagination_stays_correct_while_executions_arrive() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    pause_system_dispatch(&plane, &org).await;
    let mut quick = triage_agent("Quick", json!("all"));
    quick["steps"] =
        json!([{"id": "t", "type": "transform", "output": {"x": "{{ event_payload.ticket_id }}"}}]);
    active_agent(&plane, &org, &quick).await;
    for i in 0..12 {
        plane.publish_on_bus(&ticket(&org, &format!("tkt_{i}"), "p1", "cl_acme")).await.unwrap();
    }
    wait_for_status(&plane, &org, "limit=200", 12, "completed").await;

    let first = executions(&plane, &org, "limit=5").await;
    assert_eq!(first["total"], 12);
    let mut seen: Vec<String> = first["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    // New executions arrive between pages: they are newer, so they never shift the pages after.
    for i in 12..15 {
        plane.publish_on_bus(&ticket(&org, &format!("tkt_{i}"), "p1", "cl_acme")).await.unwrap();
    }
    wait_for_status(&plane, &org, "limit=200", 15, "completed").await;
    loop {
        let page = executions(&plane, &org, &format!("limit=5&cursor={cursor}")).await;
        seen.extend(
            page["executions"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12, "every execution of the first listing exactly once");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted, seen, "newest first, no duplicates");
    for (query, status) in
        [("limit=0", 400), ("limit=201", 400), ("status=sleeping", 400), ("from=yesterday", 400)]
    {
        let (got, _) = plane.get_json(&format!("/api/executions?{query}"), &org).await;
        assert_eq!(got, status, "{query}");
    }
}

#[tokio::test]
async fn malformed_and_unknown_events_land_in_dead_letter_and_replay() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    plane.publish_raw_on_bus(&org, "psa", "ticket.created", b"{not json".to_vec()).await.unwrap();
    let unknown =
        Envelope::new(&org, "rmm", "warranty.expiring", json!({"client_id": "cl_acme", "days_left": 10}));
    plane.publish_on_bus(&unknown).await.unwrap();
    let letters = plane
        .eventually(20, || async {
            let (_, list) = plane.get_json("/api/events/dead-letter", &org).await;
            let letters = list["dead_letters"].as_array().cloned().unwrap_or_default();
            (letters.len() == 2).then_some(letters)
        })
        .await
        .expect("two dead letters");
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("not a valid event envelope")), "{reasons:?}");
    let unknown_letter =
        letters.iter().find(|l| l["reason"].as_str().unwrap().contains("not in the event catalog")).unwrap();
    assert_eq!(unknown_letter["event_id"], unknown.id.as_str());

    // The product registers the event type and an admin builds an agent on it; the replay runs it.
    let product = plane.db.create_product_key("rmm").await.unwrap();
    let registration = json!({"display_name": "Warranty Expiring", "description": "Warranty ends soon", "category": "operations",
        "filterable_fields": [{"path": "days_left", "label": "Days left", "type": "number"}],
        "sample_payload": {"client_id": "cl_acme", "days_left": 30}});
    assert_eq!(
        plane
            .as_key(Method::PUT, "/api/events/rmm:warranty.expiring", &product)
            .json(&registration)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let warranty = json!({"name": "Warranty", "category": "operations",
        "trigger": {"type": "bus_event", "source_product": "rmm", "event_type": "warranty.expiring"},
        "steps": [{"id": "note", "type": "transform", "output": {"left": "{{ event_payload.days_left }}"}}], "client_scope": "all"});
    let agent = active_agent(&plane, &org, &warranty).await;
    let id = unknown_letter["id"].as_str().unwrap();
    let (status, replayed) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/events/dead-letter/{id}/replay"), &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{replayed}");
    assert!(replayed["replayed_at"].is_string());
    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "completed").await;
    let (_, detail) = status_and_json(
        plane
            .as_user(
                Method::GET,
                &format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()),
                &org,
                "admin",
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(detail["steps"][0]["output"], json!({"left": "10"}));

    let other = plane.db.create_org("pro").await.unwrap();
    let (status, _) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/events/dead-letter/{id}/replay"), &other, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (_, none) = status_and_json(
        plane.as_user(Method::GET, "/api/events/dead-letter", &other, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(none["dead_letters"], json!([]));
}
