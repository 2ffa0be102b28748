//! Approvals: the API's list, read and decision routes, and the signed decision links that a
//! notification carries (`/approvals/{id}/link?token=...`, outside `/api`: the link is the
//! credential). Opening a link shows the gate and two buttons and consumes nothing, so mail
//! scanners that fetch links do no harm; posting a decision through it works once (a used-once
//! marker in Redis) and only before the link expires.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use oa_domain::{ApiError, Caller, ErrorCode, Permission};
use oa_proto::approvals as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiJson, ApiQuery, ApiResult, Failure};
use crate::forward::{grpc, page_body, page_request, service_json};

/// The `/api` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/approvals", get(list_approvals))
        .route("/approvals/{id}", get(get_approval))
        .route("/approvals/{id}/decision", post(decide))
}

/// The signed-link routes, mounted outside `/api` (no sign-in). The token is in the URL: pages are
/// never cached and never send it on as a referrer.
pub fn link_router() -> Router<AppState> {
    Router::new().route("/approvals/{id}/link", get(show_link).post(decide_by_link)).layer(
        axum::middleware::map_response(|mut response: Response| async move {
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            headers.insert(header::REFERRER_POLICY, http::HeaderValue::from_static("no-referrer"));
            headers.insert(header::X_FRAME_OPTIONS, http::HeaderValue::from_static("DENY"));
            response
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_approvals(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<ApprovalsQuery>,
) -> ApiResult<Json<Value>> {
    let request = pb::ListApprovalsRequest {
        status: query.status.unwrap_or_default(),
        page: Some(page_request(query.limit, query.cursor)?),
    };
    let response = state
        .approvals
        .clone()
        .list_approvals(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let approvals =
        response.approvals.iter().map(|a| service_json(&a.approval_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(page_body("approvals", approvals, response.page))
}

async fn get_approval(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = pb::GetApprovalRequest { id };
    let approval = state
        .approvals
        .clone()
        .get_approval(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(service_json(&approval.approval_json)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    note: Option<String>,
}

async fn decide(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecisionBody>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::DecideApprovals)?;
    let request = pb::DecideRequest {
        id,
        decision: body.decision,
        note: body.note.unwrap_or_default(),
        link_token: String::new(),
    };
    let approval =
        state.approvals.clone().decide(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(Json(service_json(&approval.approval_json)?))
}

#[derive(Deserialize)]
struct LinkQuery {
    #[serde(default)]
    token: String,
}

/// A link failure, as the API's error body or, for a browser, a short page.
fn link_failure(error: ApiError, html: bool) -> Response {
    if !html {
        return Failure(error).into_response();
    }
    let status = crate::error::http_status(error.code);
    (status, Html(page("This link cannot be used", &escape(&error.message), ""))).into_response()
}

fn wants_html(headers: &HeaderMap) -> bool {
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accepts.contains("text/html")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(title: &str, body: &str, form: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>{title}</title></head><body \
         style=\"font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem\">\
         <h1 style=\"font-size:1.3rem\">{title}</h1><p>{body}</p>{form}</body></html>"
    )
}

/// Verifies a link token for gate `id`; the claims name the org and the recipient.
fn verify_link(state: &AppState, id: &str, token: &str) -> Result<oa_auth::links::LinkClaims, ApiError> {
    oa_auth::links::verify(&state.config.approvals.link_secret, token, id)
        .map_err(|error| ApiError::forbidden(format!("{error}")))
}

/// Shows the gate a link decides, with its two buttons. Consumes nothing.
async fn show_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let html = wants_html(&headers) || !headers.contains_key(header::ACCEPT);
    let claims = match verify_link(&state, &id, &query.token) {
        Ok(claims) => claims,
        Err(error) => return link_failure(error, html),
    };
    let plane = Caller::service("gateway", &claims.org_id);
    let request = pb::GetApprovalRequest { id: id.clone() };
    let gate = match state.approvals.clone().get_approval(state.outgoing(request, &plane)).await {
        Ok(response) => match service_json(&response.into_inner().approval_json) {
            Ok(gate) => gate,
            Err(failure) => return link_failure(failure.0, html),
        },
        Err(status) => return link_failure(oa_proto::status::api_error(&status), html),
    };
    if !html {
        let mut gate = gate;
        if let Some(object) = gate.as_object_mut() {
            object.remove("history");
        }
        return Json(json!({ "approval": gate, "recipient": claims.sub })).into_response();
    }
    let message = escape(gate["message"].as_str().unwrap_or_default());
    let status = gate["status"].as_str().unwrap_or_default();
    if status != "pending" {
        let body = format!("{message}<br><br>This approval is <b>{}</b>.", escape(status));
        return Html(page("Approval", &body, "")).into_response();
    }
    let action = format!("/approvals/{}/link?token={}", escape(&id), escape(&query.token));
    let form = format!(
        "<form method=\"post\" action=\"{action}\"><p><label>Note<br><textarea name=\"note\" rows=\"3\" \
         style=\"width:100%\"></textarea></label></p><button name=\"decision\" value=\"approved\">Approve</button> \
         <button name=\"decision\" value=\"denied\">Deny</button></form>"
    );
    let body = format!(
        "{message}<br><br>For {} · expires {}",
        escape(&claims.sub),
        escape(gate["expires_at"].as_str().unwrap_or_default())
    );
    Html(page("Approval needed", &body, &form)).into_response()
}

/// Decides through a link: the body is a form (`decision=approved&note=...`) or JSON.
async fn decide_by_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LinkQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let html = !json_body;
    let parsed: Result<DecisionBody, String> = if json_body {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(&body).map_err(|e| e.to_string())
    };
    let body = match parsed {
        Ok(body) => body,
        Err(error) => {
            return link_failure(ApiError::bad_request(format!("a decision is needed: {error}")), html);
        }
    };
    let claims = match verify_link(&state, &id, &query.token) {
        Ok(claims) => claims,
        Err(error) => return link_failure(error, html),
    };
    if !matches!(body.decision.as_str(), "approved" | "denied") {
        return link_failure(ApiError::bad_request("decision must be \"approved\" or \"denied\""), html);
    }
    if body.note.as_deref().is_some_and(|note| note.contains('\0')) {
        return link_failure(ApiError::bad_request("note holds a NUL character"), html);
    }
    // Used once: the first post takes the marker, for as long as the link could live.
    let marker = format!("{}approval-link:{}", state.config.redis.key_prefix, claims.jti);
    let ttl = claims.exp.saturating_sub(chrono::Utc::now().timestamp().max(0) as u64) + 60;
    let taken = match take_marker(&state, &marker, ttl).await {
        Ok(taken) => taken,
        Err(error) => return link_failure(error, html),
    };
    if !taken {
        return link_failure(ApiError::new(ErrorCode::Conflict, "This link was already used"), html);
    }
    let plane = Caller::service("gateway", &claims.org_id);
    let request = pb::DecideRequest {
        id,
        decision: body.decision,
        note: body.note.unwrap_or_default(),
        link_token: query.token,
    };
    match state.approvals.clone().decide(state.outgoing(request, &plane)).await {
        Ok(response) => {
            let gate = match service_json(&response.into_inner().approval_json) {
                Ok(gate) => gate,
                Err(failure) => return link_failure(failure.0, html),
            };
            if html {
                let body = format!(
                    "{}<br><br>Recorded: <b>{}</b>. Thank you.",
                    escape(gate["message"].as_str().unwrap_or_default()),
                    escape(gate["status"].as_str().unwrap_or_default())
                );
                Html(page("Decision recorded", &body, "")).into_response()
            } else {
                (StatusCode::OK, Json(gate)).into_response()
            }
        }
        Err(status) => {
            let error = oa_proto::status::api_error(&status);
            if crate::error::http_status(error.code).is_server_error() {
                // Nothing was decided: the link stays usable.
                release_marker(&state, &marker).await;
            }
            link_failure(error, html)
        }
    }
}

async fn take_marker(state: &AppState, marker: &str, ttl: u64) -> Result<bool, ApiError> {
    let unavailable = |e: redis::RedisError| {
        tracing::warn!(error = %e, "redis unavailable for approval links");
        ApiError::unavailable("link store")
    };
    let mut redis = state.redis().await.map_err(unavailable)?;
    let set: Option<String> = redis::cmd("SET")
        .arg(marker)
        .arg("used")
        .arg("NX")
        .arg("EX")
        .arg(ttl.max(1))
        .query_async(&mut redis)
        .await
        .map_err(unavailable)?;
    Ok(set.is_some())
}

async fn release_marker(state: &AppState, marker: &str) {
    if let Ok(mut redis) = state.redis().await {
        let _: Result<(), _> = redis::cmd("DEL").arg(marker).query_async(&mut redis).await;
    }
}
