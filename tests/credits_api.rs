//! Credits: metered AI steps that can never overdraw, and the credits API.

use oa_bus::Envelope;
use oa_domain::{Caller, Scope};
use oa_e2e::status_and_json;
use oa_proto::credits::ReserveRequest;
use oa_proto::credits::credits_client::CreditsClient;
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::json;

fn credits_client(plane: &TestPlane) -> CreditsClient<tonic::transport::Channel> {
    let endpoint = plane.config.endpoint("credits").unwrap();
    CreditsClient::new(oa_auth::service::channel(endpoint, &plane.config.grpc).unwrap())
}

fn reserve(plane: &TestPlane, org: &str, key: &str, amount: i64) -> tonic::Request<ReserveRequest> {
    let request = ReserveRequest {
        idempotency_key: key.into(),
        execution_id: "exec_test".into(),
        step_id: "classify".into(),
        agent_id: "agent_test".into(),
        model_tier: "standard".into(),
        amount,
    };
    oa_auth::service::outgoing(request, &Caller::service("worker", org), &plane.config.grpc.service_token)
}

#[tokio::test]
async fn a_thousand_concurrent_reservations_never_overdraw() {
    // Correctness under contention, not latency: on a loaded machine a reservation may wait its
    // turn for a connection longer than the default 5 s, and must then still be answered.
    let plane = TestPlane::start_with(|c| c.database.acquire_timeout_ms = 60_000).await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    plane.db.set_plan(&org, "starter", Some(500), 500).await.unwrap();
    let client = credits_client(&plane);
    let attempts = (0..1000).map(|i| {
        let mut client = client.clone();
        let request = reserve(&plane, &org, &format!("k{i}"), 20);
        async move { client.reserve(request).await }
    });
    let results = futures::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let insufficient = results
        .iter()
        .filter(|r| {
            r.as_ref().err().is_some_and(|s| {
                oa_proto::status::api_error(s).code == oa_domain::ErrorCode::CreditInsufficient
            })
        })
        .count();
    assert_eq!((ok, insufficient), (25, 975));

    let (reserved, used, allocation): (i64, i64, i64) =
        sqlx::query_as("SELECT reserved, used, allocation FROM credits.balances WHERE org_id = $1")
            .bind(&org)
            .fetch_one(&plane.db.admin)
            .await
            .unwrap();
    assert_eq!((reserved, used, allocation), (500, 0, 500));
    let ledger: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::bigint FROM credits.ledger WHERE org_id = $1 AND kind = 'reserve'",
    )
    .bind(&org)
    .fetch_one(&plane.db.admin)
    .await
    .unwrap();
    assert_eq!(ledger, 500);
    let (_, usage) = plane.get_json("/api/credits", &org).await;
    assert_eq!(usage["remaining"], 0);

    // The database itself refuses an overdraw or a negative total, whatever the code does.
    for bad in [
        "UPDATE credits.balances SET reserved = reserved + 1 WHERE org_id = $1",
        "UPDATE credits.balances SET used = -1 WHERE org_id = $1",
    ] {
        assert!(
            sqlx::query(sqlx::AssertSqlSafe(bad)).bind(&org).execute(&plane.db.admin).await.is_err(),
            "{bad}"
        );
    }
    // The plane cannot rewrite the ledger.
    let mut tx = oa_store::begin_org(&plane.db.app, &org).await.unwrap();
    assert!(sqlx::query("UPDATE credits.ledger SET amount = 0").execute(&mut *tx).await.is_err());
}

#[tokio::test]
async fn the_same_reservation_key_retried_concurrently_charges_once() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let client = credits_client(&plane);
    let attempts = (0..10).map(|_| {
        let mut client = client.clone();
        let request = reserve(&plane, &org, "exec_1:classify:1", 20);
        async move { client.reserve(request).await.map(|r| r.into_inner().reservation_id) }
    });
    let ids: Vec<String> =
        futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let reserved: i64 = sqlx::query_scalar("SELECT reserved FROM credits.balances WHERE org_id = $1")
        .bind(&org)
        .fetch_one(&plane.db.admin)
        .await
        .unwrap();
    assert_eq!(reserved, 20);

    // Negative and absurd amounts are refused, from any caller.
    for amount in [-5, 0, 10_000_000_000] {
        let status = credits_client(&plane)
            .reserve(reserve(&plane, &org, &format!("bad{amount}"), amount))
            .await
            .unwrap_err();
        assert_eq!(oa_proto::status::api_error(&status).code, oa_domain::ErrorCode::BadRequest, "{amount}");
    }
    // Only the engine reserves.
    let user = Caller {
        org_id: org.clone(),
        tier: "pro".into(),
        principal: oa_domain::Principal::User { sub: "u".into(), role: oa_domain::Role::Admin },
    };
    let request = oa_auth::service::outgoing(
        ReserveRequest { idempotency_key: "x".into(), amount: 1, ..Default::default() },
        &user,
        &plane.config.grpc.service_token,
    );
    assert_eq!(
        credits_client(&plane).reserve(request).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
}

#[tokio::test]
async fn metered_steps_charge_their_tier_and_an_org_without_credits_gets_402_and_no_model_call() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    plane.db.set_plan(&org, "pro", Some(5), 5).await.unwrap();
    let pause = plane
        .as_user(Method::PUT, "/api/agents/agent_system_dispatch", &org, "admin")
        .json(&json!({"status": "paused"}));
    assert_eq!(pause.send().await.unwrap().status(), 200);
    let definition = json!({
        "name": "Classifier", "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "classify", "type": "ai_reason", "model_tier": "standard", "prompt": "Classify {{ event_payload.ticket_id }}",
                   "output_schema": {"type": "object", "properties": {"p": {"type": "string"}}}}],
        "client_scope": "all"
    });
    let (_, agent) = status_and_json(
        plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&definition).send().await.unwrap(),
    )
    .await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let activate = plane
        .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
        .json(&json!({"status": "active"}));
    assert_eq!(activate.send().await.unwrap().status(), 200);

    // The first run costs the standard price (5): the whole allocation.
    plane
        .publish_on_bus(&Envelope::new(
            &org,
            "psa",
            "ticket.created",
            json!({"ticket_id": "t1", "client_id": "c"}),
        ))
        .await
        .unwrap();
    let first = plane
        .eventually(20, || async {
            let (_, list) = plane.get_json("/api/executions?status=completed", &org).await;
            list["executions"].get(0).cloned()
        })
        .await
        .expect("a completed execution");
    assert_eq!(first["credits_used"], 5);
    let (_, usage) = plane.get_json("/api/credits", &org).await;
    assert_eq!(
        (usage["total_used"].as_i64(), usage["remaining"].as_i64(), usage["allocation"].as_i64()),
        (Some(5), Some(0), Some(5))
    );
    assert_eq!(usage["by_agent"][&id], 5);
    assert_eq!(usage["by_model"], json!({"quick": 0, "standard": 5, "premium": 0, "expert": 0}));
    assert_eq!(usage["org_id"], org.as_str());
    let llm_calls = plane.sandbox.of_kind("llm").len();

    // Nothing left: the next run fails at the step with credit_insufficient and calls no model.
    plane
        .publish_on_bus(&Envelope::new(
            &org,
            "psa",
            "ticket.created",
            json!({"ticket_id": "t2", "client_id": "c"}),
        ))
        .await
        .unwrap();
    let failed = plane
        .eventually(20, || async {
            let (_, list) = plane.get_json("/api/executions?status=failed", &org).await;
            list["executions"].get(0).cloned()
        })
        .await
        .expect("a failed execution");
    let (_, detail) =
        plane.get_json(&format!("/api/executions/{}", failed["id"].as_str().unwrap()), &org).await;
    assert_eq!(detail["steps"][0]["error"]["code"], "credit_insufficient");
    assert_eq!(detail["error"]["code"], "credit_insufficient");
    assert_eq!(plane.sandbox.of_kind("llm").len(), llm_calls, "no model call without credits");

    // Routes that would start paid work answer 402.
    let (_, key) = plane.db.create_key(&org, &[Scope::EventsPublish]).await.unwrap();
    let body =
        json!({"source_product": "psa", "event_type": "ticket.created", "payload": {"ticket_id": "t3"}});
    let (status, error) = status_and_json(
        plane.as_key(Method::POST, "/api/events/publish", &key).json(&body).send().await.unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (402, Some("credit_insufficient")));
    let retry = plane.as_user(
        Method::POST,
        &format!("/api/executions/{}/retry", failed["id"].as_str().unwrap()),
        &org,
        "admin",
    );
    assert_eq!(retry.send().await.unwrap().status(), 402);

    // History: 12 months, newest first, zeros included.
    let (status, history) = plane.get_json("/api/credits/history", &org).await;
    assert_eq!(status, 200);
    let months = history["history"].as_array().unwrap();
    assert_eq!(months.len(), 12);
    assert_eq!(months[0]["total_used"], 5);
    assert_eq!(months[1]["total_used"], 0);
    assert!(months[0]["month"].as_str().unwrap() > months[1]["month"].as_str().unwrap());
    // Another org sees its own zero usage.
    let other = plane.db.create_org("pro").await.unwrap();
    let (_, theirs) =
        status_and_json(plane.as_user(Method::GET, "/api/credits", &other, "viewer").send().await.unwrap())
            .await;
    assert_eq!((theirs["total_used"].as_i64(), theirs["allocation"].as_i64()), (Some(0), Some(100_000)));
    let (_, _) = plane.get_json("/api/credits?month=march", &org).await;
}
