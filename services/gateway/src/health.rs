//! `/healthz`: the process is up. `/readyz`: Postgres, NATS and Redis answer, and the gateway is
//! not draining.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn check<F, E>(future: F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(CHECK_TIMEOUT, future).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        let error = oa_domain::ApiError::unavailable("gateway");
        return crate::error::Failure(oa_domain::ApiError {
            message: "The gateway is shutting down".into(),
            ..error
        })
        .into_response();
    }
    let postgres = check(oa_store::ping(&state.pool));
    let redis = check(async {
        let mut connection = state.redis().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await.map(|_| ())
    });
    let nats = check(async {
        match &state.nats {
            Some(client) => client.flush().await.map_err(|e| e.to_string()),
            None => Err("not connected".to_owned()),
        }
    });
    let (postgres, redis, nats) = tokio::join!(postgres, redis, nats);
    let report = |result: &Result<(), String>| match result {
        Ok(()) => json!("ok"),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            json!("unavailable")
        }
    };
    let checks = json!({ "postgres": report(&postgres), "redis": report(&redis), "nats": report(&nats) });
    if postgres.is_ok() && redis.is_ok() && nats.is_ok() {
        (StatusCode::OK, Json(json!({ "status": "ready", "checks": checks }))).into_response()
    } else {
        let error = oa_domain::ApiError::unavailable("plane").with_details(checks);
        crate::error::Failure(oa_domain::ApiError {
            message: "A dependency of the plane is unavailable".into(),
            ..error
        })
        .into_response()
    }
}
