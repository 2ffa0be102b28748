//! The LLM client against stand-in providers that misbehave on purpose: answers that do not match
//! the output schema get exactly one repair attempt, 429s and 5xx are retried, and a provider that
//! keeps failing opens its circuit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use oa_config::{LlmConfig, ProviderConfig, TierModel};
use oa_worker::providers::Llm;
use serde_json::{Value, json};

/// A provider whose n-th answer (from 0) is `script(n)`.
async fn provider(script: fn(usize) -> (StatusCode, Value)) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(_): Json<Value>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let (status, content) = script(n);
                (status, Json(json!({"choices": [{"message": {"role": "assistant", "content": content.to_string()}}]})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

fn llm(url: &str) -> Llm {
    let provider = ProviderConfig {
        base_url: url.into(),
        max_retries: 2,
        breaker_failures: 2,
        breaker_open_ms: 60_000,
        ..Default::default()
    };
    Llm::new(LlmConfig {
        tiers: [("quick".to_owned(), TierModel { provider: "p".into(), model: "m".into(), max_tokens: 64 })]
            .into(),
        providers: [("p".to_owned(), provider)].into(),
    })
}

fn schema() -> Value {
    json!({"type": "object", "required": ["priority"], "properties": {"priority": {"type": "string", "enum": ["p1", "p2"]}}})
}

#[tokio::test]
async fn an_answer_off_schema_is_repaired_once() {
    let (url, calls) = provider(|n| {
        (StatusCode::OK, if n == 0 { json!({"priority": "urgent"}) } else { json!({"priority": "p2"}) })
    })
    .await;
    let answer = llm(&url).reason("quick", None, "classify", &schema()).await.unwrap();
    assert_eq!(answer, json!({"priority": "p2"}));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_answer_still_off_schema_after_the_repair_fails_the_step_with_the_errors() {
    let (url, calls) = provider(|_| (StatusCode::OK, json!({"nope": true}))).await;
    let error = llm(&url).reason("quick", None, "classify", &schema()).await.unwrap_err();
    assert_eq!(error.code, "invalid_model_output");
    assert!(error.message.contains("priority"), "{}", error.message);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call and one repair, no more");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_with_backoff() {
    let (url, calls) = provider(|n| match n {
        0 => (StatusCode::TOO_MANY_REQUESTS, json!({})),
        1 => (StatusCode::BAD_GATEWAY, json!({})),
        _ => (StatusCode::OK, json!({"priority": "p1"})),
    })
    .await;
    assert_eq!(
        llm(&url).reason("quick", None, "classify", &schema()).await.unwrap(),
        json!({"priority": "p1"})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_provider_that_keeps_failing_opens_its_circuit() {
    let (url, calls) = provider(|_| (StatusCode::INTERNAL_SERVER_ERROR, json!({}))).await;
    let llm = llm(&url);
    for _ in 0..2 {
        assert_eq!(llm.reason("quick", None, "x", &schema()).await.unwrap_err().code, "model_error");
    }
    let before = calls.load(Ordering::SeqCst);
    let error = llm.reason("quick", None, "x", &schema()).await.unwrap_err();
    assert_eq!(error.code, "model_unavailable", "{}", error.message);
    assert_eq!(calls.load(Ordering::SeqCst), before, "an open circuit makes no call");
    // A client error is not retried.
    let (url, calls) = provider(|_| (StatusCode::BAD_REQUEST, json!({}))).await;
    assert_eq!(self::llm(&url).reason("quick", None, "x", &schema()).await.unwrap_err().code, "model_error");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_providers_error_reaches_the_step_as_its_status_class_only() {
    let (url, _) = provider(|_| {
        (StatusCode::BAD_REQUEST, json!({"error": "key sk-live-123 of org-internal-7 is invalid"}))
    })
    .await;
    let error = llm(&url).reason("quick", None, "x", &schema()).await.unwrap_err();
    assert_eq!(error.code, "model_error");
    assert!(error.message.contains("4xx"), "{}", error.message);
    assert!(!error.message.contains("sk-live") && !error.message.contains(&url), "{}", error.message);
    // No answer at all: neither the provider's address nor the connect error is shown.
    let error = llm("http://127.0.0.1:9").reason("quick", None, "x", &schema()).await.unwrap_err();
    assert!(!error.message.contains("127.0.0.1"), "{}", error.message);
}
