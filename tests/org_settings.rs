//! Org settings: who the plane talks to on an org's behalf. Contacts and the org's own webhooks
//! are the admins' to set; system agents read them; approval links go only to them; an org that
//! has not set a contact gets the step skipped with the reason.

use oa_bus::Envelope;
use oa_e2e::{active_agent, pause_system_agent, ransomware_detected, status_and_json, wait_for_status};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

async fn put_settings(plane: &TestPlane, org: &str, role: &str, body: &Value) -> (u16, Value) {
    let request = plane.as_user(Method::PUT, "/api/org/settings", org, role).json(body);
    status_and_json(request.send().await.unwrap()).await
}

#[tokio::test]
async fn settings_are_the_admins_to_set_checked_and_shown_without_secrets() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let other = plane.db.create_org("pro").await.unwrap();
    let settings = json!({"contacts": {"on_call_sms": ["+15550001111"], "security_email": ["sec@acme.example"]},
                          "webhooks": {"slack": "https://hooks.slack.com/services/T0/B0/s3cret"}});
    let (status, shown) = put_settings(&plane, &org, "admin", &settings).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["contacts"]["on_call_sms"], json!(["+15550001111"]));
    assert_eq!(shown["webhooks"]["slack"], "https://hooks.slack.com/***", "the secret part is never shown");
    let (status, read) = plane.get_json("/api/org/settings", &org).await;
    assert_eq!(status, 403, "viewers do not read contacts: {read}");
    let read = plane.as_user(Method::GET, "/api/org/settings", &org, "admin").send().await.unwrap();
    let (_, read) = status_and_json(read).await;
    assert_eq!(read, shown);
    assert!(!read.to_string().contains("s3cret"));
    for role in ["technician", "viewer"] {
        assert_eq!(put_settings(&plane, &org, role, &settings).await.0, 403, "{role}");
    }
    let bad = json!({"contacts": {"on_call_sms": ["call me"], "pager": ["x"]}, "webhooks": {"slack": "javascript:alert(1)"}});
    let (status, error) = put_settings(&plane, &org, "admin", &bad).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")), "{error}");
    let paths: Vec<&str> =
        error["details"].as_array().unwrap().iter().filter_map(|d| d["path"].as_str()).collect();
    for path in ["contacts.on_call_sms[0]", "contacts.pager", "webhooks.slack"] {
        assert!(paths.contains(&path), "{path} in {paths:?}");
    }
    // Another org sees its own (empty) settings, never these.
    let other_read = plane.as_user(Method::GET, "/api/org/settings", &other, "admin").send().await.unwrap();
    let (_, other_read) = status_and_json(other_read).await;
    assert_eq!(other_read, json!({"contacts": {}, "webhooks": {}}));
}

#[tokio::test]
async fn guardian_texts_its_link_to_the_orgs_own_on_call_number_and_nobody_elses() {
    let plane = TestPlane::start().await.unwrap();
    let (org, other) = (plane.db.create_org("pro").await.unwrap(), plane.db.create_org("pro").await.unwrap());
    put_settings(&plane, &org, "admin", &json!({"contacts": {"on_call_sms": ["+15550001111"]}})).await;
    put_settings(&plane, &other, "admin", &json!({"contacts": {"on_call_sms": ["+15550002222"]}})).await;
    plane.publish_on_bus(&ransomware_detected(&org, "dev_1", "svch0st.exe")).await.unwrap();
    wait_for_status(&plane, &org, "agent_id=agent_system_guardian", 1, "waiting_approval").await;
    let texts = plane
        .eventually(10, || async {
            let texts = plane.sandbox.of_kind("sms");
            (!texts.is_empty()).then_some(texts)
        })
        .await
        .expect("the on-call number is texted");
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0].target, "+15550001111");
    assert!(texts[0].body["body"].as_str().unwrap().contains("/link?token="), "{:?}", texts[0].body);
    assert!(
        plane.sandbox.of_kind("sms").iter().all(|t| t.target != "+15550002222"),
        "the other org's phone got nothing"
    );
}

#[tokio::test]
async fn an_org_without_the_contact_gets_the_step_skipped_with_the_reason() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    // Dispatch pages on-call for a P1 (the sandbox model classifies it p1).
    let ticket = Envelope::new(
        &org,
        "psa",
        "ticket.created",
        json!({"ticket_id": "tkt_1", "priority": "p1", "subject": "Email down", "client_id": "cl_acme", "client_name": "Acme"}),
    );
    plane.publish_on_bus(&ticket).await.unwrap();
    let runs = wait_for_status(&plane, &org, "agent_id=agent_system_dispatch", 1, "completed").await;
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()), &org).await;
    let page =
        detail["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == "page_on_call").unwrap().clone();
    assert_eq!(page["status"], "skipped", "{detail}");
    assert!(page["output"]["skipped_because"].as_str().unwrap().contains("on_call_sms"), "{page}");
    // Guardian's gate opens all the same, decidable in the API; the trace says why nobody was texted.
    plane.publish_on_bus(&ransomware_detected(&org, "dev_2", "svch0st.exe")).await.unwrap();
    let runs = wait_for_status(&plane, &org, "agent_id=agent_system_guardian", 1, "waiting_approval").await;
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()), &org).await;
    let gate = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "confirm_isolation")
        .unwrap()
        .clone();
    assert!(gate["output"]["not_announced_because"].as_str().unwrap().contains("on_call_sms"), "{gate}");
    assert!(plane.sandbox.of_kind("sms").is_empty());
}

#[tokio::test]
async fn approval_links_go_to_contacts_only_and_chat_goes_through_the_orgs_own_webhook() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let gate = |recipient: &str| {
        json!({"name": "Gate", "category": "security", "client_scope": "all",
               "trigger": {"type": "bus_event", "source_product": "defend", "event_type": "ransomware.detected"},
               "steps": [{"id": "ask", "type": "approval", "message": "Go?", "expires_in": "1h",
                          "notify": {"channel": "sms", "recipients": [recipient]}}]})
    };
    let create = |body: Value| plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&body).send();
    let (status, body) =
        status_and_json(create(gate("{{ event_payload.device.hostname }}")).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"][0]["path"], "steps[0].notify.recipients[0]");
    assert_eq!(create(gate("{{ org.contacts.on_call_sms }}")).await.unwrap().status(), 201);

    // Slack messages go to the org's own webhook; without one, the step is skipped.
    let chat = json!({"name": "Chat", "category": "security", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "defend", "event_type": "ransomware.detected"},
        "steps": [{"id": "tell", "type": "notification", "channel": "slack", "recipients": ["#security"], "body": "Ransomware"}]});
    let agent = active_agent(&plane, &org, &chat).await;
    pause_system_agent(&plane, &org, "agent_system_guardian").await;
    plane.publish_on_bus(&ransomware_detected(&org, "dev_1", "svch0st.exe")).await.unwrap();
    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "completed").await;
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()), &org).await;
    assert_eq!(detail["steps"][0]["status"], "skipped", "{detail}");
    assert!(plane.sandbox.of_kind("webhook").is_empty(), "the operator's webhook is never used for an org");
    let hook = format!("http://{}/webhooks/acme-slack", plane.config.sandbox.http_listen);
    put_settings(&plane, &org, "admin", &json!({"webhooks": {"slack": hook}})).await;
    plane.publish_on_bus(&ransomware_detected(&org, "dev_2", "svch0st.exe")).await.unwrap();
    wait_for_status(&plane, &org, &format!("agent_id={agent}&status=completed"), 2, "completed").await;
    let posts = plane
        .eventually(10, || async {
            let posts = plane.sandbox.of_kind("webhook");
            (!posts.is_empty()).then_some(posts)
        })
        .await
        .expect("posted to the org's webhook");
    assert_eq!(posts[0].target, "acme-slack");
    assert_eq!(posts[0].body["channel"], "#security");
}
