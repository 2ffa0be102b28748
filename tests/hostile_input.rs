//! Hostile and broken input: NUL characters refused at the edge and dead-lettered on the bus,
//! step outputs that cannot be stored failing once, messages that keep failing given up after
//! their deliveries, a Postgres outage that loses nothing, and event ids that are per org.

use oa_bus::Envelope;
use oa_domain::Scope;
use oa_e2e::{active_agent, executions, pause_system_dispatch, status_and_json, wait_for_status};
use oa_testkit::TestPlane;
use oa_testkit::proxy::Proxy;
use reqwest::Method;
use serde_json::{Value, json};

/// An agent on `psa:ticket.created` that notes the ticket: no outside call, no credits.
fn noting_agent(name: &str) -> Value {
    json!({
        "name": name, "category": "service_desk", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "note", "type": "transform", "output": {"ticket": "{{ event_payload.ticket_id }}"}}]
    })
}

fn ticket(org: &str, ticket_id: &str) -> Envelope {
    Envelope::new(org, "psa", "ticket.created", json!({"ticket_id": ticket_id, "subject": "Printer on fire"}))
}

/// A plane that gives a failing message up after three quick deliveries.
async fn impatient_plane() -> TestPlane {
    TestPlane::start_with(|config| {
        config.nats.max_deliveries = 3;
        config.nats.redelivery_delay_ms = 100;
    })
    .await
    .unwrap()
}

/// A new org whose system dispatcher is paused, so the only executions are the test's own.
async fn quiet_org(plane: &TestPlane) -> String {
    let org = plane.db.create_org("pro").await.unwrap();
    pause_system_dispatch(plane, &org).await;
    org
}

/// The detail of `agent`'s one execution, once it has `status`.
async fn only_run(plane: &TestPlane, org: &str, agent: &str, status: &str) -> Value {
    let runs = wait_for_status(plane, org, &format!("agent_id={agent}"), 1, status).await;
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", runs[0]["id"].as_str().unwrap()), org).await;
    detail
}

async fn dead_letters(plane: &TestPlane, org: &str) -> Vec<Value> {
    let (status, list) = plane.get_json("/api/events/dead-letter", org).await;
    assert_eq!(status, 200, "{list}");
    list["dead_letters"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_dead_letters(plane: &TestPlane, org: &str, count: usize) -> Vec<Value> {
    plane
        .eventually(30, || async {
            let letters = dead_letters(plane, org).await;
            (letters.len() == count).then_some(letters)
        })
        .await
        .unwrap_or_else(|| panic!("expected {count} dead letters"))
}

#[tokio::test]
async fn a_nul_in_a_body_a_query_or_a_path_is_400_naming_where_it_is() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (_, key) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
    let poisoned = json!({"source_product": "psa", "event_type": "ticket.created",
                          "payload": {"ticket_id": "tkt_1", "subject": "a\u{0}b"}});
    let (status, body) = status_and_json(
        plane.as_key(Method::POST, "/api/events/publish", &key).json(&poisoned).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("payload.subject"), "{body}");

    let mut agent = noting_agent("Nul");
    agent["steps"][0]["output"]["ticket"] = json!("x\u{0}");
    let (status, body) = status_and_json(
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&agent).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("steps[0].output.ticket"), "{body}");
    let (_, list) = plane.get_json("/api/agents?type=custom", &org).await;
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(0), "nothing was stored: {list}");

    for path in [
        "/api/executions?cursor=%00",
        "/api/executions?status=failed&cursor=abc%00def",
        "/api/agents/agent_%00x",
        "/api/executions/exec_%00",
        "/api/approvals/appr_%00",
        "/api/events/psa:ticket.created%00",
    ] {
        let (status, body) = plane.get_json(path, &org).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{path}: {body}");
        assert_eq!(body["status"], 400);
    }
    let (_, body) = plane.get_json("/api/executions?cursor=%00", &org).await;
    assert!(body["message"].as_str().unwrap().contains("cursor"), "{body}");
}

#[tokio::test]
async fn a_nul_event_put_straight_on_the_bus_is_dead_lettered_once_and_the_worker_carries_on() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    let agent = active_agent(&plane, &org, &noting_agent("Notes")).await;
    let mut poisoned = ticket(&org, "tkt_nul");
    poisoned.payload["subject"] = json!("a\u{0}b");
    plane.publish_on_bus(&poisoned).await.unwrap();
    // Raw bytes holding a NUL are not even JSON; they are kept (without the NUL) all the same.
    plane.publish_raw_on_bus(&org, "psa", "ticket.created", b"{\"id\": \"a\0b\"".to_vec()).await.unwrap();
    plane.publish_on_bus(&ticket(&org, "tkt_good")).await.unwrap();

    let detail = only_run(&plane, &org, &agent, "completed").await;
    assert_eq!(detail["steps"][0]["output"], json!({"ticket": "tkt_good"}));
    let letters = wait_for_dead_letters(&plane, &org, 2).await;
    let nul = letters.iter().find(|l| l["event_id"] == poisoned.id.as_str()).expect("the NUL event's letter");
    let reason = nul["reason"].as_str().unwrap();
    assert!(reason.contains("NUL") && reason.contains("payload.subject"), "{reason}");
    // Once: nothing loops, however long we look.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(dead_letters(&plane, &org).await.len(), 2);
    assert_eq!(executions(&plane, &org, "").await["total"], 1);
}

#[tokio::test]
async fn a_step_whose_output_holds_a_nul_fails_once_and_nothing_is_sent_twice() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    let agent = json!({
        "name": "Broken model", "category": "service_desk", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [
            {"id": "page", "type": "notification", "channel": "sms", "recipients": ["+15550001111"], "body": "ticket {{ event_payload.ticket_id }}"},
            {"id": "think", "type": "ai_reason", "model_tier": "quick", "prompt": "sandbox-nul {{ event_payload.ticket_id }}",
             "output_schema": {"type": "object", "required": ["summary"], "properties": {"summary": {"type": "string"}}}},
            {"id": "tell", "type": "notification", "channel": "sms", "recipients": ["+15550002222"], "body": "{{ steps.think.output.summary }}"}
        ]
    });
    let agent = active_agent(&plane, &org, &agent).await;
    plane.publish_on_bus(&ticket(&org, "tkt_model")).await.unwrap();
    let detail = only_run(&plane, &org, &agent, "failed").await;
    let statuses: Vec<&str> =
        detail["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["completed", "failed", "skipped"], "{detail}");
    assert_eq!(detail["steps"][1]["error"]["code"], "invalid_output", "{detail}");
    assert!(detail["steps"][1]["error"]["message"].as_str().unwrap().contains("output.summary"), "{detail}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(plane.sandbox.of_kind("sms").len(), 1, "the first notification once, the last never");
    assert_eq!(plane.sandbox.of_kind("llm").len(), 1, "the model was called once");
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_lettered_with_max_deliveries() {
    let plane = impatient_plane().await;
    let org = quiet_org(&plane).await;
    active_agent(&plane, &org, &noting_agent("Notes")).await;
    // A bad deploy: the executions table is gone, so every delivery of the event fails.
    sqlx::query("ALTER TABLE executions.executions RENAME TO executions_gone")
        .execute(&plane.db.admin)
        .await
        .unwrap();
    let event = ticket(&org, "tkt_doomed");
    plane.publish_on_bus(&event).await.unwrap();
    let letters = wait_for_dead_letters(&plane, &org, 1).await;
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("max_deliveries"), "{reason}");
    assert!(reason.contains("3 deliveries"), "{reason}");
    assert_eq!(letters[0]["event_id"], event.id.as_str());

    // Fixed and replayed, it runs.
    sqlx::query("ALTER TABLE executions.executions_gone RENAME TO executions")
        .execute(&plane.db.admin)
        .await
        .unwrap();
    let id = letters[0]["id"].as_str().unwrap();
    let replay = plane.as_user(Method::POST, &format!("/api/events/dead-letter/{id}/replay"), &org, "admin");
    assert_eq!(replay.send().await.unwrap().status(), 202);
    wait_for_status(&plane, &org, "", 1, "completed").await;
}

#[tokio::test]
async fn during_a_postgres_outage_no_accepted_event_is_dropped() {
    let proxy = Proxy::start(oa_testkit::postgres_addr()).await.unwrap();
    let plane = TestPlane::start_with(|config| {
        oa_testkit::connect_database_through(config, proxy.addr);
        config.nats.max_deliveries = 2;
        config.nats.redelivery_delay_ms = 100;
        config.database.acquire_timeout_ms = 500;
    })
    .await
    .unwrap();
    let org = quiet_org(&plane).await;
    let agent = active_agent(&plane, &org, &noting_agent("Notes")).await;

    proxy.cut();
    let events: Vec<Envelope> = (0..5).map(|n| ticket(&org, &format!("tkt_{n}"))).collect();
    for event in &events {
        plane.publish_on_bus(event).await.unwrap();
    }
    // Far longer than max_deliveries x the redelivery delay: an outage uses no deliveries up.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    proxy.restore();

    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}&limit=10"), 5, "completed").await;
    let mut tickets: Vec<String> = Vec::new();
    for run in &runs {
        let (_, detail) =
            plane.get_json(&format!("/api/executions/{}", run["id"].as_str().unwrap()), &org).await;
        tickets.push(detail["steps"][0]["output"]["ticket"].as_str().unwrap().to_owned());
    }
    tickets.sort();
    assert_eq!(tickets, ["tkt_0", "tkt_1", "tkt_2", "tkt_3", "tkt_4"]);
    assert!(dead_letters(&plane, &org).await.is_empty(), "nothing was given up");
}

#[tokio::test]
async fn two_orgs_publishing_the_same_event_id_both_run_and_a_republish_stays_deduplicated() {
    let plane = TestPlane::start().await.unwrap();
    let mut orgs = Vec::new();
    for _ in 0..2 {
        let org = plane.db.create_org("pro").await.unwrap();
        pause_system_dispatch(&plane, &org).await;
        let agent = active_agent(&plane, &org, &noting_agent("Notes")).await;
        let (_, key) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
        orgs.push((org, agent, key));
    }
    let body = |ticket: &str| {
        json!({"id": "evt_shared1", "source_product": "psa", "event_type": "ticket.created",
               "payload": {"ticket_id": ticket}})
    };
    for (org, _, key) in &orgs {
        for _ in 0..2 {
            let response =
                plane.as_key(Method::POST, "/api/events/publish", key).json(&body(org)).send().await.unwrap();
            assert_eq!(response.status(), 202);
        }
    }
    for (org, agent, _) in &orgs {
        let detail = only_run(&plane, org, agent, "completed").await;
        assert_eq!(detail["trigger_event"]["id"], "evt_shared1");
        assert_eq!(detail["steps"][0]["output"]["ticket"], org.as_str(), "each org ran its own event");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for (org, _, _) in &orgs {
        assert_eq!(executions(&plane, org, "").await["total"], 1, "the republish was dropped");
    }
}

#[tokio::test]
async fn a_deleted_agents_execution_cannot_be_retried_and_replay_needs_credits() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    let mut failing = noting_agent("Fails");
    failing["steps"][0]["output"]["ticket"] = json!("{{ event_payload.missing.deeper }}");
    let agent = active_agent(&plane, &org, &failing).await;
    plane.publish_on_bus(&ticket(&org, "tkt_1")).await.unwrap();
    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "failed").await;
    let execution = runs[0]["id"].as_str().unwrap().to_owned();
    let delete = plane.as_user(Method::DELETE, &format!("/api/agents/{agent}"), &org, "admin");
    assert_eq!(delete.send().await.unwrap().status(), 204);
    let (status, body) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/executions/{execution}/retry"), &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")), "{body}");

    // A dead letter of an org with nothing left: replaying it is paid work, refused like a publish.
    let unknown = Envelope::new(&org, "rmm", "warranty.expiring", json!({"days_left": 3}));
    plane.publish_on_bus(&unknown).await.unwrap();
    let letters = wait_for_dead_letters(&plane, &org, 1).await;
    plane.db.set_plan(&org, "pro", Some(0), 0).await.unwrap();
    let id = letters[0]["id"].as_str().unwrap();
    let (status, body) = status_and_json(
        plane
            .as_user(Method::POST, &format!("/api/events/dead-letter/{id}/replay"), &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (402, Some("credit_insufficient")), "{body}");
    assert!(dead_letters(&plane, &org).await[0]["replayed_at"].is_null(), "nothing was replayed");
}

#[tokio::test]
async fn a_webhook_aimed_inside_the_network_fails_with_a_generic_error_and_sends_nothing() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    // The recipient is a template: event data picks the URL.
    let agent = json!({
        "name": "Hook", "category": "service_desk", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "hook", "type": "notification", "channel": "webhook",
                   "recipients": ["{{ event_payload.subject }}"], "body": "ticket {{ event_payload.ticket_id }}"}]
    });
    let agent = active_agent(&plane, &org, &agent).await;
    // Only the sandbox's own port is admitted on loopback; the gateway's is not.
    let gateway_port = plane.addr.port();
    let targets = [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        format!("http://localhost:{gateway_port}/api/me"),
        format!("http://127.0.0.1:{gateway_port}/"),
    ];
    for (n, target) in targets.iter().enumerate() {
        let mut event = ticket(&org, &format!("tkt_{n}"));
        event.payload["subject"] = json!(target);
        plane.publish_on_bus(&event).await.unwrap();
    }
    let runs = wait_for_status(&plane, &org, &format!("agent_id={agent}"), targets.len(), "failed").await;
    for run in runs {
        let (_, detail) =
            plane.get_json(&format!("/api/executions/{}", run["id"].as_str().unwrap()), &org).await;
        let error = &detail["steps"][0]["error"];
        assert_eq!(error["code"], "delivery_failed", "{detail}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("not permitted"), "{message}");
        assert!(
            !message.contains("169.254") && !message.contains("10.0.0.1") && !message.contains("127.0.0.1"),
            "{message}"
        );
    }
    assert!(plane.sandbox.of_kind("webhook").is_empty(), "nothing was delivered");
}

#[tokio::test]
async fn an_org_cannot_hold_more_definitions_than_its_tier_allows_drafts_included() {
    let plane = TestPlane::start_with(|config| config.tiers.starter.max_agents = 3).await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    let create = |name: &str| {
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&noting_agent(name)).send()
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, agent) = status_and_json(create(&format!("Draft {n}")).await.unwrap()).await;
        assert_eq!(status, 201, "{agent}");
        ids.push(agent["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = status_and_json(create("One too many").await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("quota_exceeded")), "{body}");
    assert_eq!(body["status"], 429);
    let clone = plane.as_user(Method::POST, &format!("/api/agents/{}/clone", ids[0]), &org, "admin");
    assert_eq!(clone.send().await.unwrap().status(), 429, "a clone is a definition too");
    // Another org is not affected, and deleting one makes room.
    let other = plane.db.create_org("starter").await.unwrap();
    let other_create =
        plane.as_user(Method::POST, "/api/agents", &other, "admin").json(&noting_agent("Mine"));
    assert_eq!(other_create.send().await.unwrap().status(), 201);
    let delete = plane.as_user(Method::DELETE, &format!("/api/agents/{}", ids[0]), &org, "admin");
    assert_eq!(delete.send().await.unwrap().status(), 204);
    assert_eq!(create("Room again").await.unwrap().status(), 201);
}

#[tokio::test]
async fn a_template_that_multiplies_strings_past_the_cap_fails_its_step_with_a_clear_error() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    let mut bomb = noting_agent("Bomb");
    bomb["steps"][0]["output"]["ticket"] =
        json!("{% for c in 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}{{ c * 100000000 }}{% endfor %}");
    let agent = active_agent(&plane, &org, &bomb).await;
    plane.publish_on_bus(&ticket(&org, "tkt_bomb")).await.unwrap();
    let detail = only_run(&plane, &org, &agent, "failed").await;
    let error = &detail["steps"][0]["error"];
    assert_eq!(error["code"], "template_error", "{detail}");
    assert!(error["message"].as_str().unwrap().contains("larger than the limit"), "{detail}");
}

#[tokio::test]
async fn cookie_writes_from_outside_the_hub_are_refused() {
    let plane =
        TestPlane::start_with(|config| config.gateway.hub_origins = vec!["https://hub.example.com".into()])
            .await
            .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let cookie = format!("{}={}", plane.config.auth.session_cookie, plane.token(&org, "admin"));
    let write = |origin: Option<&str>, content_type: &str| {
        let mut request = plane
            .http
            .post(plane.url("/api/agents"))
            .header("cookie", cookie.as_str())
            .header("content-type", content_type)
            .body(noting_agent("From a browser").to_string());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    for (origin, content_type) in [
        (Some("https://evil.example.com"), "application/json"),
        (None, "application/json"),
        (Some("https://hub.example.com"), "text/plain"),
        (Some("https://hub.example.com"), "application/x-www-form-urlencoded"),
    ] {
        let (status, body) = status_and_json(write(origin, content_type).await.unwrap()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{origin:?} {content_type}: {body}"
        );
    }
    let (_, list) = plane.get_json("/api/agents?type=custom", &org).await;
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(0), "nothing was written");
    let (status, body) =
        status_and_json(write(Some("https://hub.example.com"), "application/json").await.unwrap()).await;
    assert_eq!(status, 201, "{body}");
    // Reads with the cookie, and writes with a bearer token or a key, need no Origin.
    let read = plane.http.get(plane.url("/api/agents")).header("cookie", cookie.as_str());
    assert_eq!(read.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    for response in [
        plane.http.get(plane.url("/healthz")).send().await.unwrap(),
        plane.as_user(Method::GET, "/api/me", &org, "viewer").send().await.unwrap(),
        plane.http.get(plane.url("/api/me")).send().await.unwrap(),
    ] {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(headers.get("strict-transport-security").is_none(), "plain http: no HSTS");
    }
    let behind_https = plane.http.get(plane.url("/healthz")).header("x-forwarded-proto", "https");
    let response = behind_https.send().await.unwrap();
    assert!(response.headers()["strict-transport-security"].to_str().unwrap().contains("max-age="));
}

#[tokio::test]
async fn the_request_timeout_is_applied() {
    let plane = TestPlane::start_with(|config| config.gateway.request_timeout_ms = 1).await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (status, body) = plane.get_json("/api/executions", &org).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("service_unavailable")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("1 ms"), "{body}");
}

#[tokio::test]
async fn failed_authentication_is_limited_per_client_address() {
    let plane =
        TestPlane::start_with(|config| config.gateway.rate_limit.auth_failures_per_client = 3).await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let guess = || plane.http.get(plane.url("/api/me")).header("x-integration-key", "oak_guess_wrong").send();
    for _ in 0..3 {
        assert_eq!(guess().await.unwrap().status(), 401);
    }
    let (status, body) = status_and_json(guess().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");
    // A right credential from the same address waits out the window too: guessing cannot go on.
    let response = plane.as_user(Method::GET, "/api/me", &org, "viewer").send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn work_that_keeps_failing_fails_its_execution_with_max_deliveries() {
    let plane = impatient_plane().await;
    let org = quiet_org(&plane).await;
    let agent = json!({
        "name": "Pager", "category": "service_desk", "client_scope": "all",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "page", "type": "notification", "channel": "sms", "recipients": ["+15550001111"], "body": "ticket"}]
    });
    let agent = active_agent(&plane, &org, &agent).await;
    // A bad deploy: the record of sent notifications is gone, so the step fails on every delivery.
    sqlx::query("ALTER TABLE executions.side_effects RENAME TO side_effects_gone")
        .execute(&plane.db.admin)
        .await
        .unwrap();
    plane.publish_on_bus(&ticket(&org, "tkt_doomed")).await.unwrap();
    let detail = only_run(&plane, &org, &agent, "failed").await;
    assert_eq!(detail["error"]["code"], "max_deliveries", "{detail}");
    assert!(detail["error"]["message"].as_str().unwrap().contains("3 deliveries"), "{detail}");
    assert_eq!(detail["steps"][0]["status"], "failed", "{detail}");
    assert!(plane.sandbox.of_kind("sms").is_empty(), "nothing was sent");
}

#[tokio::test]
async fn definitions_stay_within_the_tiers_recipient_and_schedule_caps() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    let create = |body: Value| plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&body).send();
    let mut crowd = noting_agent("Crowd");
    let recipients: Vec<String> = (0..11).map(|n| format!("+1555000{n:04}")).collect();
    crowd["steps"] = json!([{"id": "page", "type": "notification", "channel": "sms", "recipients": recipients, "body": "hi"}]);
    let (status, body) = status_and_json(create(crowd).await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_agent_config")), "{body}");
    assert_eq!(body["details"][0]["path"], "steps[0].recipients", "{body}");

    let scheduled = |cron: &str| {
        let mut agent = noting_agent("Scheduled");
        agent["trigger"] = json!({"type": "schedule", "cron": cron, "timezone": "Europe/Paris"});
        agent["steps"][0]["output"] = json!({"at": "{{ event.occurred_at }}"});
        agent
    };
    let (status, body) = status_and_json(create(scheduled("* * * * *")).await.unwrap()).await;
    assert_eq!(status, 400, "every minute is below the starter tier's five: {body}");
    assert!(body["details"][0]["message"].as_str().unwrap().contains("300 seconds"), "{body}");
    let (status, body) = status_and_json(create(scheduled("*/5 * * * *")).await.unwrap()).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn steps_past_the_size_and_time_caps_fail_once_with_errors_naming_the_cap() {
    let plane = TestPlane::start_with(|config| {
        config.limits.max_rendered_bytes = 200;
        config.limits.max_prompt_bytes = 100;
        config.limits.max_step_output_bytes = 150;
        config.limits.notification_budget_ms = 500;
    })
    .await
    .unwrap();
    let org = quiet_org(&plane).await;
    let schema =
        json!({"type": "object", "required": ["summary"], "properties": {"summary": {"type": "string"}}});
    let hook = format!("http://{}/webhooks/slow", plane.config.sandbox.http_listen);
    let cases = [
        (
            "rendered",
            json!({"id": "s", "type": "transform", "output": {"x": "{{ event_payload.subject }}"}}),
            "template_error",
        ),
        (
            "prompt",
            json!({"id": "s", "type": "ai_reason", "model_tier": "quick", "prompt": "Summarise {{ event_payload.ticket_id }} {{ event_payload.ticket_id }} {{ event_payload.ticket_id }}", "output_schema": schema}),
            "prompt_too_large",
        ),
        (
            "output",
            json!({"id": "s", "type": "transform", "output": {"a": "{{ event_payload.ticket_id }}", "b": "{{ event_payload.ticket_id }}", "c": "{{ event_payload.ticket_id }}", "d": "{{ event_payload.ticket_id }}"}}),
            "output_too_large",
        ),
        (
            "budget",
            json!({"id": "s", "type": "notification", "channel": "webhook", "recipients": [hook.clone(), hook.clone(), hook], "body": "sandbox-delay-ms:400"}),
            "delivery_failed",
        ),
    ];
    let mut agents = Vec::new();
    for (name, step, code) in &cases {
        let mut agent = noting_agent(name);
        agent["steps"] = json!([step]);
        agents.push((active_agent(&plane, &org, &agent).await, *code));
    }
    let mut event = ticket(&org, &"t".repeat(40));
    event.payload["subject"] = json!("s".repeat(300));
    plane.publish_on_bus(&event).await.unwrap();
    for (agent, code) in agents {
        let detail = only_run(&plane, &org, &agent, "failed").await;
        assert_eq!(detail["steps"][0]["error"]["code"], code, "{detail}");
    }
    assert!(plane.sandbox.of_kind("llm").is_empty(), "an oversized prompt never reaches the model");
    assert!(plane.sandbox.of_kind("webhook").len() <= 2, "the budget ran out before the third recipient");
}

#[tokio::test]
async fn every_model_call_carries_the_tiers_max_tokens() {
    let plane = TestPlane::start_with(|config| {
        config.llm.tiers.get_mut("quick").unwrap().max_tokens = 321;
    })
    .await
    .unwrap();
    let org = quiet_org(&plane).await;
    let mut agent = noting_agent("Think");
    agent["steps"] = json!([{"id": "s", "type": "ai_reason", "model_tier": "quick", "prompt": "Summarise {{ event_payload.ticket_id }}",
        "output_schema": {"type": "object", "required": ["summary"], "properties": {"summary": {"type": "string"}}}}]);
    let agent = active_agent(&plane, &org, &agent).await;
    plane.publish_on_bus(&ticket(&org, "tkt_1")).await.unwrap();
    wait_for_status(&plane, &org, &format!("agent_id={agent}"), 1, "completed").await;
    let calls = plane.sandbox.of_kind("llm");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["max_tokens"], 321, "{:?}", calls[0].body);
}

#[tokio::test]
async fn with_starttls_required_no_mail_goes_out_in_clear_text() {
    // The sandbox relay offers no STARTTLS, as a relay an attacker sits in front of might not.
    let plane = TestPlane::start_with(|config| config.channels.smtp_tls = Some(oa_config::SmtpTls::Starttls))
        .await
        .unwrap();
    let org = quiet_org(&plane).await;
    let mut agent = noting_agent("Mail");
    agent["steps"] = json!([{"id": "mail", "type": "notification", "channel": "email",
                             "recipients": ["oncall@example.com"], "subject": "Ticket", "body": "ticket {{ event_payload.ticket_id }}"}]);
    let agent = active_agent(&plane, &org, &agent).await;
    plane.publish_on_bus(&ticket(&org, "tkt_1")).await.unwrap();
    let detail = only_run(&plane, &org, &agent, "failed").await;
    assert_eq!(detail["steps"][0]["error"]["code"], "delivery_failed", "{detail}");
    assert!(!detail["steps"][0]["error"]["message"].as_str().unwrap().contains("127.0.0.1"), "{detail}");
    assert!(plane.sandbox.of_kind("email").is_empty(), "nothing was sent in clear text");
}

#[tokio::test]
async fn a_template_that_doubles_a_string_fails_its_step_and_the_worker_stays_small() {
    let plane = TestPlane::start().await.unwrap();
    let org = quiet_org(&plane).await;
    // 15 MB doubled 40 times: far past any machine, in a definition an org admin may write.
    let mut bomb = String::from("{% set s0 = event_payload.subject * 1000000 %}");
    for n in 1..=40 {
        bomb.push_str(&format!("{{% set s{n} = s{} ~ s{} %}}", n - 1, n - 1));
    }
    bomb.push_str("{{ s40 | length }}");
    let mut agent = noting_agent("Doubler");
    agent["steps"][0]["output"]["ticket"] = json!(bomb);
    let doubler = active_agent(&plane, &org, &agent).await;
    let notes = active_agent(&plane, &org, &noting_agent("Notes")).await;
    let before = oa_testkit::peak_rss_bytes();
    plane.publish_on_bus(&ticket(&org, "tkt_1")).await.unwrap();
    let detail = only_run(&plane, &org, &doubler, "failed").await;
    let error = &detail["steps"][0]["error"];
    assert_eq!(error["code"], "template_error", "{detail}");
    assert!(error["message"].as_str().unwrap().contains("memory"), "{detail}");
    // The org's other agent ran on the same event, and the next event runs too.
    wait_for_status(&plane, &org, &format!("agent_id={notes}"), 1, "completed").await;
    plane.publish_on_bus(&ticket(&org, "tkt_2")).await.unwrap();
    wait_for_status(&plane, &org, &format!("agent_id={notes}"), 2, "completed").await;
    let grown = oa_testkit::peak_rss_bytes().saturating_sub(before);
    assert!(grown < 128 * 1024 * 1024, "the plane grew by {grown} bytes");
}
