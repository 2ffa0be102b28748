//! The Agents and Templates sections of the API reference, driven through the gateway against
//! the real services and Postgres.

use oa_domain::Scope;
use oa_e2e::{p1_escalation, status_and_json};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

async fn create(plane: &TestPlane, org: &str, body: &Value) -> Value {
    let response = plane.as_user(Method::POST, "/api/agents", org, "admin").json(body).send().await.unwrap();
    let (status, agent) = status_and_json(response).await;
    assert_eq!(status, 201, "{agent}");
    agent
}

async fn own_agents_in_db(plane: &TestPlane, org: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM agents.agents WHERE org_id = $1")
        .bind(org)
        .fetch_one(&plane.db.admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_org_sees_the_system_agents_with_its_own_status_and_zero_stats() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (status, list) = plane.get_json("/api/agents", &org).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 6);
    let agents = list["agents"].as_array().unwrap();
    assert!(
        agents.iter().all(|a| a["org_id"] == "system" && a["type"] == "system" && a["status"] == "active")
    );
    let dispatch = agents.iter().find(|a| a["id"] == "agent_system_dispatch").expect("the dispatch agent");
    assert_eq!(dispatch["name"], "Dispatch Agent");
    assert_eq!(
        dispatch["stats"],
        json!({"total_runs": 0, "success_rate": 0.0, "avg_duration_ms": 0, "last_run_at": null, "credits_used_this_month": 0})
    );
    for (query, expected) in
        [("type=system", 6), ("category=security", 1), ("status=paused", 0), ("type=custom", 0)]
    {
        let (status, list) = plane.get_json(&format!("/api/agents?{query}"), &org).await;
        assert_eq!((status, list["total"].as_u64()), (200, Some(expected)), "{query}");
    }
    for query in ["status=sleeping", "type=robot", "category=gardening"] {
        let (status, body) = plane.get_json(&format!("/api/agents?{query}"), &org).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{query}");
    }
}

#[tokio::test]
async fn an_admin_creates_reads_updates_versions_and_deletes_a_custom_agent() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let agent = create(&plane, &org, &p1_escalation("P1 Escalation Notify")).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("agent_"));
    assert_eq!(
        (agent["status"].as_str(), agent["type"].as_str(), agent["version"].as_i64()),
        (Some("draft"), Some("custom"), Some(1))
    );
    assert_eq!(agent["org_id"], org.as_str());
    assert_eq!(agent["steps"][0]["id"], "notify_senior");
    assert_eq!(agent["trigger"]["filters"][0]["value"], "p1");

    let (status, fetched) = status_and_json(
        plane.as_user(Method::GET, &format!("/api/agents/{id}"), &org, "technician").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fetched, agent);

    let response = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    let (status, updated) = status_and_json(response).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["name"].as_str(), updated["version"].as_i64(), updated["status"].as_str()),
        (Some("Renamed"), Some(2), Some("draft"))
    );
    assert_eq!(updated["steps"], agent["steps"], "a partial update keeps the other fields");

    let response = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"status": "active"}))
        .send()
        .await
        .unwrap();
    let (status, active) = status_and_json(response).await;
    assert_eq!(
        (status, active["status"].as_str(), active["version"].as_i64()),
        (200, Some("active"), Some(3))
    );

    let (status, versions) = plane.get_json(&format!("/api/agents/{id}/versions"), &org).await;
    assert_eq!(status, 200);
    let numbers: Vec<i64> =
        versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    assert_eq!(versions["versions"][2]["definition"]["name"], "P1 Escalation Notify");
    assert_eq!(versions["versions"][0]["status"], "active");

    let response = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"status": "error"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_agent_config")));

    let response =
        plane.as_user(Method::DELETE, &format!("/api/agents/{id}"), &org, "admin").send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, body) = status_and_json(
        plane.as_user(Method::GET, &format!("/api/agents/{id}"), &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("agent_not_found")));
    let (status, _) = status_and_json(
        plane.as_user(Method::DELETE, &format!("/api/agents/{id}"), &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = status_and_json(
        plane.as_user(Method::GET, "/api/agents?type=custom", &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn an_invalid_definition_is_400_with_details_and_stores_nothing() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let mut body = p1_escalation("Broken");
    body["trigger"]["filters"][0]["field"] = json!("not_a_field");
    body["steps"][0]["type"] = json!("teleport");
    let response =
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&body).send().await.unwrap();
    let (status, error) = status_and_json(response).await;
    assert_eq!(status, 400);
    assert_eq!(
        (error["error"].as_str(), error["status"].as_i64()),
        (Some("invalid_agent_config"), Some(400))
    );
    let paths: Vec<&str> =
        error["details"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"trigger.filters[0].field") && paths.contains(&"steps[0].type"), "{paths:?}");
    assert_eq!(own_agents_in_db(&plane, &org).await, 0);

    // An invalid update leaves the agent as it was.
    let agent = create(&plane, &org, &p1_escalation("Good")).await;
    let id = agent["id"].as_str().unwrap();
    let response = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"name": "Half", "client_scope": 7}))
        .send()
        .await
        .unwrap();
    let (status, error) = status_and_json(response).await;
    assert_eq!((status, error["details"][0]["path"].as_str()), (400, Some("client_scope")));
    let (_, unchanged) = status_and_json(
        plane.as_user(Method::GET, &format!("/api/agents/{id}"), &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(unchanged, agent);

    // Malformed JSON and creating straight into active.
    let response = plane
        .as_user(Method::POST, "/api/agents", &org, "admin")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let (status, error) = status_and_json(response).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
    let mut active = p1_escalation("Eager");
    active["status"] = json!("active");
    let (status, error) = status_and_json(
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&active).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, error["details"][0]["path"].as_str()), (400, Some("status")));
    assert_eq!(own_agents_in_db(&plane, &org).await, 1);
}

#[tokio::test]
async fn roles_and_key_scopes_decide_who_writes() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let body = p1_escalation("Scoped");
    for role in ["technician", "viewer"] {
        let (status, error) = status_and_json(
            plane.as_user(Method::POST, "/api/agents", &org, role).json(&body).send().await.unwrap(),
        )
        .await;
        assert_eq!((status, error["error"].as_str()), (403, Some("forbidden")), "{role}");
    }
    let (_, reader) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let (_, writer) = plane.db.create_key(&org, &[Scope::AgentsWrite]).await.unwrap();
    let (_, publisher) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
    let (status, _) =
        status_and_json(plane.as_key(Method::POST, "/api/agents", &reader).json(&body).send().await.unwrap())
            .await;
    assert_eq!(status, 403);
    let (status, _) =
        status_and_json(plane.as_key(Method::GET, "/api/agents", &publisher).send().await.unwrap()).await;
    assert_eq!(status, 403, "a key without an agents scope cannot read agents");
    let (status, agent) =
        status_and_json(plane.as_key(Method::POST, "/api/agents", &writer).json(&body).send().await.unwrap())
            .await;
    assert_eq!(status, 201, "{agent}");
    let (status, list) =
        status_and_json(plane.as_key(Method::GET, "/api/agents?type=custom", &reader).send().await.unwrap())
            .await;
    assert_eq!((status, list["total"].as_u64()), (200, Some(1)));
    assert_eq!(own_agents_in_db(&plane, &org).await, 1);
}

#[tokio::test]
async fn a_system_agent_can_only_be_paused_or_resumed_for_the_org_or_cloned() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let other = plane.db.create_org("pro").await.unwrap();
    let path = "/api/agents/agent_system_guardian";

    for change in
        [json!({"name": "Mine now"}), json!({"status": "paused", "name": "x"}), json!({"status": "draft"})]
    {
        let (status, error) = status_and_json(
            plane.as_user(Method::PUT, path, &org, "admin").json(&change).send().await.unwrap(),
        )
        .await;
        assert_eq!((status, error["error"].as_str()), (403, Some("forbidden")), "{change}");
    }
    let (status, error) =
        status_and_json(plane.as_user(Method::DELETE, path, &org, "admin").send().await.unwrap()).await;
    assert_eq!((status, error["error"].as_str()), (403, Some("forbidden")));

    let (status, paused) = status_and_json(
        plane
            .as_user(Method::PUT, path, &org, "admin")
            .json(&json!({"status": "paused"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, paused["status"].as_str()), (200, Some("paused")));
    let (_, elsewhere) =
        status_and_json(plane.as_user(Method::GET, path, &other, "admin").send().await.unwrap()).await;
    assert_eq!(elsewhere["status"], "active", "a pause is the org's own");
    let (_, listed) = status_and_json(
        plane.as_user(Method::GET, "/api/agents?status=paused", &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(listed["agents"][0]["id"], "agent_system_guardian");
    let (status, resumed) = status_and_json(
        plane
            .as_user(Method::PUT, path, &org, "admin")
            .json(&json!({"status": "active"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, resumed["status"].as_str()), (200, Some("active")));

    let (status, clone) = status_and_json(
        plane
            .as_user(Method::POST, &format!("{path}/clone"), &org, "admin")
            .json(&json!({"name": "Our Guardian"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{clone}");
    assert_eq!((clone["type"].as_str(), clone["status"].as_str()), (Some("cloned"), Some("draft")));
    assert_eq!(
        (clone["cloned_from"].as_str(), clone["name"].as_str()),
        (Some("agent_system_guardian"), Some("Our Guardian"))
    );
    assert_eq!(clone["steps"], paused["steps"]);
    assert_eq!(clone["org_id"], org.as_str());
    let (status, versions) = plane.get_json(&format!("{path}/versions"), &org).await;
    assert_eq!((status, versions["versions"][0]["version"].as_i64()), (200, Some(1)));
}

#[tokio::test]
async fn another_orgs_agent_is_a_404_identical_to_a_missing_one_and_stays_unchanged() {
    let plane = TestPlane::start().await.unwrap();
    let owner = plane.db.create_org("pro").await.unwrap();
    let intruder = plane.db.create_org("pro").await.unwrap();
    let agent = create(&plane, &owner, &p1_escalation("Owned")).await;
    let id = agent["id"].as_str().unwrap();
    let missing = "agent_01JZZZZZZZZZZZZZZZZZZZZZZZ";

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/agents/{}".into(), None),
        (Method::PUT, "/api/agents/{}".into(), Some(json!({"name": "Taken over", "status": "active"}))),
        (Method::DELETE, "/api/agents/{}".into(), None),
        (Method::POST, "/api/agents/{}/clone".into(), Some(json!({"name": "Stolen"}))),
        (Method::GET, "/api/agents/{}/versions".into(), None),
    ];
    for (method, template, body) in routes {
        let send = |target: &str| {
            let mut request =
                plane.as_user(method.clone(), &template.replace("{}", target), &intruder, "admin");
            if let Some(body) = &body {
                request = request.json(body);
            }
            request.send()
        };
        let (status, foreign) = status_and_json(send(id).await.unwrap()).await;
        let (missing_status, absent) = status_and_json(send(missing).await.unwrap()).await;
        assert_eq!((status, missing_status), (404, 404), "{method} {template}");
        assert_eq!(foreign["error"], "agent_not_found");
        let absent_as_foreign: Value =
            serde_json::from_str(&absent.to_string().replace(missing, id)).unwrap();
        assert_eq!(
            foreign, absent_as_foreign,
            "{method} {template}: the bodies differ only by the id asked for"
        );
    }
    let (_, still) = status_and_json(
        plane.as_user(Method::GET, &format!("/api/agents/{id}"), &owner, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!(still, agent, "nothing changed");
    assert_eq!(own_agents_in_db(&plane, &intruder).await, 0, "no clone was made");
}

#[tokio::test]
async fn twenty_parallel_activations_against_a_cap_of_five_leave_exactly_five_active() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    assert_eq!(plane.config.tiers.starter.max_active_agents, 5);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            create(&plane, &org, &p1_escalation(&format!("Agent {i}"))).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let activations = ids.iter().map(|id| {
        plane
            .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
            .json(&json!({"status": "active"}))
            .send()
    });
    let responses = futures::future::join_all(activations).await;
    let mut statuses = Vec::new();
    for response in responses {
        let (status, body) = status_and_json(response.unwrap()).await;
        if status == 429 {
            assert_eq!(body["error"], "agent_limit_reached");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15, "{statuses:?}");
    let active: i64 =
        sqlx::query_scalar("SELECT count(*) FROM agents.agents WHERE org_id = $1 AND status = 'active'")
            .bind(&org)
            .fetch_one(&plane.db.admin)
            .await
            .unwrap();
    assert_eq!(active, 5);

    // Pausing one frees exactly one place; system agents do not count against the cap.
    let (_, active_list) = status_and_json(
        plane
            .as_user(Method::GET, "/api/agents?type=custom&status=active", &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let first_active = active_list["agents"][0]["id"].as_str().unwrap().to_owned();
    let pause = plane
        .as_user(Method::PUT, &format!("/api/agents/{first_active}"), &org, "admin")
        .json(&json!({"status": "paused"}));
    assert_eq!(pause.send().await.unwrap().status(), 200);
    let (_, drafts) = status_and_json(
        plane.as_user(Method::GET, "/api/agents?status=draft", &org, "admin").send().await.unwrap(),
    )
    .await;
    let drafts: Vec<&str> =
        drafts["agents"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(drafts.len(), 15);
    let activate = |id: &str| {
        plane
            .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
            .json(&json!({"status": "active"}))
            .send()
    };
    assert_eq!(activate(drafts[0]).await.unwrap().status(), 200);
    assert_eq!(activate(drafts[1]).await.unwrap().status(), 429);
}

#[tokio::test]
async fn templates_are_listed_by_category_and_cloned_into_draft_agents() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (status, list) = plane.get_json("/api/templates", &org).await;
    assert_eq!(status, 200);
    let templates = list["templates"].as_array().unwrap();
    assert!(templates.len() >= 10);
    let sla = templates.iter().find(|t| t["id"] == "tmpl_sla_escalation").expect("the SLA template");
    assert_eq!((sla["category"].as_str(), sla["version"].as_str()), (Some("operations"), Some("1.0.0")));
    assert_eq!(sla["trigger"]["event_type"], "ticket.sla_warning");

    let (_, security) = plane.get_json("/api/templates?category=security", &org).await;
    assert!(security["templates"].as_array().unwrap().iter().all(|t| t["category"] == "security"));
    assert!(!security["templates"].as_array().unwrap().is_empty());
    let (status, error) = plane.get_json("/api/templates?category=fun", &org).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));

    let (status, named) = status_and_json(
        plane
            .as_user(Method::POST, "/api/templates/tmpl_sla_escalation/clone", &org, "admin")
            .json(&json!({"name": "My SLA Escalation"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{named}");
    assert_eq!((named["type"].as_str(), named["status"].as_str()), (Some("template"), Some("draft")));
    assert_eq!(
        (named["name"].as_str(), named["template_id"].as_str()),
        (Some("My SLA Escalation"), Some("tmpl_sla_escalation"))
    );
    let (status, unnamed) = status_and_json(
        plane
            .as_user(Method::POST, "/api/templates/tmpl_sla_escalation/clone", &org, "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, unnamed["name"].as_str()), (201, Some("SLA Escalation")));

    let (status, error) = status_and_json(
        plane.as_user(Method::POST, "/api/templates/tmpl_nothing/clone", &org, "admin").send().await.unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (404, Some("template_not_found")));
    let (status, error) = status_and_json(
        plane
            .as_user(Method::POST, "/api/templates/tmpl_sla_escalation/clone", &org, "admin")
            .body("{oops")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = status_and_json(
        plane
            .as_user(Method::POST, "/api/templates/tmpl_sla_escalation/clone", &org, "technician")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn an_upgrade_brings_installed_system_agents_up_to_the_shipped_definitions() {
    let db = oa_testkit::TestDb::create().await.unwrap();
    assert!(oa_agents::seed_agents(&db.app).await.unwrap(), "first start installs");
    assert!(!oa_agents::seed_agents(&db.app).await.unwrap(), "a restart changes nothing");
    // As installed by an older release.
    sqlx::query(
        "UPDATE agents.agents SET definition = jsonb_set(definition, '{description}', '\"old\"')
         WHERE id = 'agent_system_guardian'",
    )
    .execute(&db.admin)
    .await
    .unwrap();
    assert!(oa_agents::seed_agents(&db.app).await.unwrap());
    let (version, description): (i32, String) = sqlx::query_as(
        "SELECT version, definition->>'description' FROM agents.agents WHERE id = 'agent_system_guardian'",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    let shipped =
        oa_agents::shipped_system_agents().into_iter().find(|a| a.id == "agent_system_guardian").unwrap();
    assert_eq!((version, description), (2, shipped.definition.description));
    let versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents.agent_versions WHERE agent_id = 'agent_system_guardian'",
    )
    .fetch_one(&db.admin)
    .await
    .unwrap();
    assert_eq!(versions, 2);
}
