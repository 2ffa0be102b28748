//! Authentication at the gateway: the token attack set, keys, cookies, roles and bad input.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oa_auth::HubClaims;
use oa_domain::Scope;
use oa_e2e::{status_and_body, status_and_json};
use oa_testkit::{ATTACKER_KEY_PEM, HUB_TEST_KEY_PEM, HUB_TEST_KID, TestPlane};
use reqwest::Method;
use serde_json::json;

fn claims(plane: &TestPlane, org_id: &str) -> HubClaims {
    oa_auth::dev::claims(&plane.config.auth, org_id, "admin", "user-1", 3600)
}

fn sign_rs256(pem: &str, kid: &str, claims: &HubClaims) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn unsigned_token(header: serde_json::Value, claims: &HubClaims) -> String {
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{body}.")
}

/// The classic RS256 → HS256 confusion: HMACs keyed with the Hub's public key, as PEM and as the
/// JWKS modulus, the forms attackers try.
fn hs256_with_public_key(claims: &HubClaims) -> Vec<String> {
    let public_pem = oa_auth::dev::public_pem_for_private_pem(HUB_TEST_KEY_PEM).unwrap();
    let jwks = oa_auth::dev::jwks_for_private_pem(HUB_TEST_KEY_PEM, HUB_TEST_KID).unwrap();
    let modulus = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    [public_pem.into_bytes(), modulus.into_bytes(), jwks.to_string().into_bytes()]
        .into_iter()
        .map(|secret| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(HUB_TEST_KID.to_owned());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret)).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn every_bad_credential_gets_one_identical_401_body() {
    // Dozens of refusals from one address: the failure limit (its own test) is lifted here.
    let plane = TestPlane::start_with(|config| config.gateway.rate_limit.auth_failures_per_client = 10_000)
        .await
        .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (revoked_key_id, revoked_key) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    oa_tenancy::KeyStore::new(plane.db.admin.clone()).revoke(&org, &revoked_key_id).await.unwrap();
    let now = chrono::Utc::now().timestamp();

    let mut expired = claims(&plane, &org);
    expired.exp = now - 3600;
    expired.nbf = Some(now - 7200);
    let mut not_yet_valid = claims(&plane, &org);
    not_yet_valid.nbf = Some(now + 3600);
    let mut wrong_issuer = claims(&plane, &org);
    wrong_issuer.iss = "https://evil.example".into();
    let mut wrong_audience = claims(&plane, &org);
    wrong_audience.aud = "another-api".into();
    let mut unknown_org = claims(&plane, "org_nobody");
    unknown_org.org_id = "org_nobody".into();
    let mut bad_role = claims(&plane, &org);
    bad_role.role = "owner".into();
    let good = claims(&plane, &org);

    let mut bearer_tokens = vec![
        ("malformed", "not-a-jwt".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        ("expired", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &expired)),
        ("not yet valid", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &not_yet_valid)),
        ("wrong issuer", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &wrong_issuer)),
        ("wrong audience", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &wrong_audience)),
        ("wrongly signed", sign_rs256(ATTACKER_KEY_PEM, HUB_TEST_KID, &good)),
        ("unknown kid", sign_rs256(ATTACKER_KEY_PEM, "attacker", &good)),
        ("org not served", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &unknown_org)),
        ("unknown role", sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &bad_role)),
        ("alg none", unsigned_token(json!({"alg": "none", "typ": "JWT", "kid": HUB_TEST_KID}), &good)),
        ("alg None", unsigned_token(json!({"alg": "None", "kid": HUB_TEST_KID}), &good)),
    ];
    for (i, token) in hs256_with_public_key(&good).into_iter().enumerate() {
        bearer_tokens.push(if i == 0 { ("hs256 with public key", token) } else { ("hs256 variant", token) });
    }

    let (status, reference) =
        status_and_body(plane.http.get(plane.url("/api/me")).send().await.unwrap()).await;
    assert_eq!(status, 401, "missing credentials");
    let body: serde_json::Value = serde_json::from_slice(&reference).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["status"], 401);

    for (name, token) in &bearer_tokens {
        let response = plane.http.get(plane.url("/api/me")).bearer_auth(token).send().await.unwrap();
        let (status, body) = status_and_body(response).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(body, reference, "{name}: the body must not reveal why");
        // The same token in the session cookie is refused the same way.
        let response = plane
            .http
            .get(plane.url("/api/me"))
            .header("cookie", format!("{}={token}", plane.config.auth.session_cookie))
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_body(response).await;
        assert_eq!((status, &body), (401, &reference), "{name} (cookie)");
    }

    let keys = [
        ("revoked key", revoked_key.clone()),
        ("unknown key", format!("oak_abcdefgh1234_{}", "x".repeat(40))),
        ("malformed key", "oak_nope".to_owned()),
        ("right prefix, wrong secret", format!("{}{}", &revoked_key[..17], "Z".repeat(40))),
    ];
    for (name, key) in &keys {
        let (status, body) =
            status_and_body(plane.as_key(Method::GET, "/api/me", key).send().await.unwrap()).await;
        assert_eq!((status, &body), (401, &reference), "{name}");
    }

    // And the valid token of the same shape is accepted, so the refusals above are meaningful.
    let response =
        plane.http.get(plane.url("/api/me")).bearer_auth(sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &good));
    assert_eq!(response.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_hub_user_is_resolved_from_the_bearer_header_or_the_session_cookie() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let token = plane.token(&org, "technician");

    let (status, me) =
        status_and_json(plane.http.get(plane.url("/api/me")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(me["org_id"], org.as_str());
    assert_eq!(me["org"]["tier"], "pro");
    assert_eq!(me["org"]["max_active_agents"], 25);
    assert_eq!(me["principal"], json!({"type": "user", "sub": "user-1", "role": "technician"}));

    let cookie = format!("other=1; {}={token}", plane.config.auth.session_cookie);
    let response = plane.http.get(plane.url("/api/me")).header("cookie", cookie).send().await.unwrap();
    let (status, by_cookie) = status_and_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(by_cookie, me);
}

#[tokio::test]
async fn an_integration_key_resolves_to_its_org_and_scopes_and_records_its_use() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    let (key_id, key) = plane.db.create_key(&org, &[Scope::AgentsRead, Scope::EventsPublish]).await.unwrap();

    let (status, me) =
        status_and_json(plane.as_key(Method::GET, "/api/me", &key).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(me["org_id"], org.as_str());
    assert_eq!(
        me["principal"],
        json!({"type": "integration_key", "key_id": key_id, "scopes": ["agents:read", "events:publish"]})
    );
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM tenancy.integration_keys WHERE id = $1")
            .bind(&key_id)
            .fetch_one(&plane.db.admin)
            .await
            .unwrap();
    assert!(used.is_some(), "last_used_at is recorded");
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_the_next_request_on() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("starter").await.unwrap();
    let (key_id, key) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    assert_eq!(plane.as_key(Method::GET, "/api/me", &key).send().await.unwrap().status(), 200);

    let keys = oa_tenancy::KeyStore::new(plane.db.admin.clone());
    assert!(keys.revoke(&org, &key_id).await.unwrap());
    assert_eq!(plane.as_key(Method::GET, "/api/me", &key).send().await.unwrap().status(), 401);
    // Revoking through another org is refused and changes nothing.
    let other = plane.db.create_org("starter").await.unwrap();
    assert!(!keys.revoke(&other, &key_id).await.unwrap());
}

#[tokio::test]
async fn a_viewer_cannot_write_anywhere() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = plane
            .as_user(method.clone(), "/api/agents", &org, "viewer")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, 403, "{method}");
        assert_eq!(body["error"], "forbidden");
    }
    assert_eq!(plane.as_user(Method::GET, "/api/me", &org, "viewer").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_with_the_api_body() {
    let plane = TestPlane::start_with(|c| c.gateway.body_limit_bytes = 1024).await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(4096));
    let response = plane
        .as_user(Method::POST, "/api/agents", &org, "admin")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 413);
    assert_eq!(body, json!({"error": "payload_too_large", "message": body["message"], "status": 413}));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_the_api_body() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (status, body) =
        status_and_json(plane.as_user(Method::GET, "/api/nothing-here", &org, "admin").send().await.unwrap())
            .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) =
        status_and_json(plane.as_user(Method::DELETE, "/api/me", &org, "admin").send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (405, Some("method_not_allowed")));
    // Unauthenticated callers cannot probe which routes exist.
    let (status, _) =
        status_and_body(plane.http.get(plane.url("/api/nothing-here")).send().await.unwrap()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let plane = TestPlane::start().await.unwrap();
    let response = plane.http.get(plane.url("/healthz")).send().await.unwrap();
    assert!(response.headers().get("x-request-id").is_some());
    let response =
        plane.http.get(plane.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.headers().get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test]
async fn a_rotated_hub_key_is_fetched_when_a_token_names_an_unknown_kid() {
    use std::sync::{Arc, Mutex};
    let served =
        Arc::new(Mutex::new(oa_auth::dev::jwks_for_private_pem(HUB_TEST_KEY_PEM, HUB_TEST_KID).unwrap()));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let served = served.clone();
        let fetches = fetches.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { axum::Json(served.lock().unwrap().clone()) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let plane = TestPlane::start_with(|c| {
        c.auth.jwks_file = None;
        c.auth.jwks_url = Some(jwks_url);
    })
    .await
    .unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let good = claims(&plane, &org);
    let first = sign_rs256(HUB_TEST_KEY_PEM, HUB_TEST_KID, &good);
    assert_eq!(plane.http.get(plane.url("/api/me")).bearer_auth(&first).send().await.unwrap().status(), 200);
    assert_eq!(plane.http.get(plane.url("/api/me")).bearer_auth(&first).send().await.unwrap().status(), 200);
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "keys are cached");

    // The Hub rotates to a new key; a token naming it is accepted without a restart.
    *served.lock().unwrap() = oa_auth::dev::jwks_for_private_pem(ATTACKER_KEY_PEM, "hub-test-2").unwrap();
    let rotated = sign_rs256(ATTACKER_KEY_PEM, "hub-test-2", &good);
    assert_eq!(
        plane.http.get(plane.url("/api/me")).bearer_auth(&rotated).send().await.unwrap().status(),
        200
    );
}
