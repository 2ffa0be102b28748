//! The egress client against real local HTTP servers: internal addresses are refused before any
//! byte is sent (with the allow-list empty), names are checked on what they resolve to, redirects
//! are not followed, and the tenant's error carries no body and no URL.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use oa_config::EgressRule;
use oa_worker::egress::{Egress, EgressError, Lookup, Policy};
use serde_json::json;

/// A local server that counts what reaches it: `/ok`, `/redirect` (to a private address) and
/// `/fail` (a 500 whose body names internal things).
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = |hits: Arc<AtomicUsize>, answer: fn() -> axum::response::Response| {
        axum::routing::post(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        })
    };
    let app = Router::new()
        .route("/ok", counted(hits.clone(), || axum::Json(json!({"ok": true})).into_response()))
        .route(
            "/redirect",
            counted(hits.clone(), || {
                (StatusCode::FOUND, [(header::LOCATION, "http://10.0.0.1/latest/meta-data/")]).into_response()
            }),
        )
        .route(
            "/fail",
            counted(hits.clone(), || {
                (StatusCode::INTERNAL_SERVER_ERROR, "db at 10.1.1.1:5432 refused user admin").into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

fn policy(allow: &[String]) -> Policy {
    Policy { allow: allow.iter().map(|e| EgressRule::parse(e).unwrap()).collect(), ..Policy::default() }
}

/// A resolver that maps every name to 127.0.0.1, as a rebinding attacker's DNS would.
fn rebinding_lookup() -> Lookup {
    Arc::new(|_host: String| Box::pin(async { Ok(vec![IpAddr::from([127, 0, 0, 1])]) }))
}

async fn send(egress: &Egress, url: &str) -> Result<serde_json::Value, EgressError> {
    egress.post_json(url, "key-1", &json!({"text": "hello"}), Duration::from_secs(2)).await
}

#[tokio::test]
async fn internal_addresses_are_refused_before_anything_is_sent() {
    let (addr, hits) = server().await;
    let egress = Egress::new(policy(&[]));
    let port = addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/ok"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://[::1]/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        format!("http://localhost:{port}/ok"),
        "gopher://example.com/".to_owned(),
        "not a url".to_owned(),
    ] {
        assert_eq!(send(&egress, &url).await, Err(EgressError::Refused), "{url}");
    }
    let rebinding = Egress::with_lookup(policy(&[]), rebinding_lookup());
    assert_eq!(
        send(&rebinding, &format!("http://hooks.example.com:{port}/ok")).await,
        Err(EgressError::Refused)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the internal server");
}

#[tokio::test]
async fn an_allow_listed_host_port_is_reached_and_nothing_else_on_that_host() {
    let (addr, hits) = server().await;
    let egress = Egress::with_lookup(policy(&[addr.to_string()]), rebinding_lookup());
    assert_eq!(send(&egress, &format!("http://{addr}/ok")).await, Ok(json!({"ok": true})));
    // A name resolving to the allowed address and port is admitted by the address.
    assert_eq!(
        send(&egress, &format!("http://hooks.example.com:{}/ok", addr.port())).await,
        Ok(json!({"ok": true}))
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        send(&egress, &format!("http://127.0.0.1:{}/ok", addr.port() ^ 1)).await,
        Err(EgressError::Refused)
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_errors_carry_no_body_or_url() {
    let (addr, hits) = server().await;
    let egress = Egress::new(policy(&[addr.to_string()]));
    let redirected = send(&egress, &format!("http://{addr}/redirect")).await;
    assert_eq!(redirected, Err(EgressError::Status(302)));
    let failed = send(&egress, &format!("http://{addr}/fail")).await.unwrap_err();
    assert_eq!(failed, EgressError::Status(500));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one call each: the redirect was not followed");
    for error in [redirected.unwrap_err(), failed] {
        let message = error.tenant_message();
        assert!(
            !message.contains("10.") && !message.contains("127.0.0.1") && !message.contains("admin"),
            "{message}"
        );
    }
    assert_eq!(EgressError::Status(500).tenant_message(), "the destination answered with a 5xx status");
}

#[tokio::test]
async fn production_needs_https() {
    let (addr, hits) = server().await;
    let egress = Egress::new(Policy { https_only: true, ..policy(&[addr.to_string()]) });
    assert_eq!(send(&egress, &format!("http://{addr}/ok")).await, Err(EgressError::Refused));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}
