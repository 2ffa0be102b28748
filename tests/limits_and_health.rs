//! Rate limits in Redis and the health endpoints.

use oa_domain::Scope;
use oa_e2e::status_and_json;
use oa_testkit::TestPlane;
use reqwest::Method;

#[tokio::test]
async fn an_org_over_its_limit_gets_429_with_retry_after_while_another_org_is_unaffected() {
    let plane = TestPlane::start_with(|c| {
        c.gateway.rate_limit.per_org = 3;
        c.gateway.rate_limit.window_seconds = 60;
    })
    .await
    .unwrap();
    let busy = plane.db.create_org("pro").await.unwrap();
    let quiet = plane.db.create_org("pro").await.unwrap();

    for _ in 0..3 {
        assert_eq!(plane.as_user(Method::GET, "/api/me", &busy, "admin").send().await.unwrap().status(), 200);
    }
    let response = plane.as_user(Method::GET, "/api/me", &busy, "admin").send().await.unwrap();
    let retry_after: u64 = response.headers().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["status"], 429);

    let response = plane.as_user(Method::GET, "/api/me", &quiet, "admin").send().await.unwrap();
    assert_eq!(response.status(), 200, "another org is not limited");
    assert_eq!(response.headers().get("x-ratelimit-remaining").unwrap(), "2");
}

#[tokio::test]
async fn a_key_over_its_own_limit_is_limited_before_its_org() {
    let plane = TestPlane::start_with(|c| {
        c.gateway.rate_limit.per_org = 100;
        c.gateway.rate_limit.per_key = 2;
    })
    .await
    .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (_, noisy) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let (_, other) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(plane.as_key(Method::GET, "/api/me", &noisy).send().await.unwrap().status(), 200);
    }
    let limited = plane.as_key(Method::GET, "/api/me", &noisy).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(plane.as_key(Method::GET, "/api/me", &other).send().await.unwrap().status(), 200);
    assert_eq!(plane.as_user(Method::GET, "/api/me", &org, "viewer").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn readyz_reports_every_dependency_ready() {
    let plane = TestPlane::start().await.unwrap();
    let (status, body) = status_and_json(plane.http.get(plane.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"], serde_json::json!({"postgres": "ok", "redis": "ok", "nats": "ok"}));
    let (status, body) = status_and_json(plane.http.get(plane.url("/healthz")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

/// A port on which nothing listens: bound, then released.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn readyz_fails_when_postgres_is_down_while_healthz_stays_up() {
    let port = dead_port();
    let plane = TestPlane::start_with(|c| {
        c.database.url = format!("postgres://one_agents_app@127.0.0.1:{port}/nowhere").into();
        c.database.acquire_timeout_ms = 500;
    })
    .await
    .unwrap();
    let (status, body) = status_and_json(plane.http.get(plane.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "service_unavailable");
    assert_eq!(body["details"]["postgres"], "unavailable");
    assert_eq!(body["details"]["redis"], "ok");
    assert_eq!(plane.http.get(plane.url("/healthz")).send().await.unwrap().status(), 200);

    // An integration key cannot be checked without the database: 503, never a 500 or a 401.
    let response = plane
        .as_key(Method::GET, "/api/me", &format!("oak_abcdefgh1234_{}", "x".repeat(40)))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("service_unavailable")), "{body}");
}

#[tokio::test]
async fn a_redis_outage_lets_requests_through_and_shows_in_readyz() {
    let port = dead_port();
    let plane = TestPlane::start_with(|c| {
        c.redis.url = format!("redis://127.0.0.1:{port}").into();
        c.gateway.rate_limit.per_org = 1;
    })
    .await
    .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    for _ in 0..3 {
        assert_eq!(plane.as_user(Method::GET, "/api/me", &org, "admin").send().await.unwrap().status(), 200);
    }
    let (status, body) = status_and_json(plane.http.get(plane.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["details"]["redis"].as_str()), (503, Some("unavailable")));
}
