//! What every route module uses to forward a request to a service and shape its answer: pages,
//! gRPC failures, JSON a service produced, and the credit check before paid work.

use axum::Json;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use oa_domain::{ApiError, Caller};
use oa_proto::credits as credits_pb;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::Failure;

/// Routes that start paid work answer 402 when the org has nothing left this month. The check
/// reads usage as the plane (any caller may start work); when the credits service cannot answer,
/// the work is accepted and the metered steps themselves refuse to overdraw.
pub(crate) async fn require_credit(state: &AppState, caller: &Caller) -> Result<(), Failure> {
    let plane = Caller::service("gateway", &caller.org_id);
    let request = credits_pb::GetUsageRequest { month: String::new() };
    let Ok(usage) = state.credits.clone().get_usage(state.outgoing(request, &plane)).await else {
        return Ok(());
    };
    let remaining = serde_json::from_str::<Value>(&usage.into_inner().usage_json)
        .ok()
        .and_then(|u| u["remaining"].as_i64())
        .unwrap_or(1);
    if remaining <= 0 {
        return Err(Failure(ApiError::new(
            oa_domain::ErrorCode::CreditInsufficient,
            "The org has no credits left this month",
        )));
    }
    Ok(())
}

/// The page a list route asks for: `limit` (1 to 200; an explicit 0 is refused, absent means the
/// default) and `cursor`.
pub(crate) fn page_request(
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<oa_proto::common::PageRequest, Failure> {
    if limit == Some(0) {
        let max = oa_domain::page::MAX_LIMIT;
        return Err(ApiError::bad_request(format!("limit must be between 1 and {max}")).into());
    }
    Ok(oa_proto::common::PageRequest { limit: limit.unwrap_or(0), cursor: cursor.unwrap_or_default() })
}

/// A list answer: `{<key>: [...], "total", "next_cursor"}` (`null` on the last page).
pub(crate) fn page_body(
    key: &str,
    items: Vec<Value>,
    page: Option<oa_proto::common::PageInfo>,
) -> Json<Value> {
    let page = page.unwrap_or_default();
    let next_cursor = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
    Json(json!({ key: items, "total": page.total, "next_cursor": next_cursor }))
}

pub(crate) fn grpc(status: tonic::Status) -> Failure {
    Failure(oa_proto::status::api_error(&status))
}

/// Parses JSON a service produced.
pub(crate) fn service_json(text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure(ApiError::internal_from("service answer", &e)))
}

pub(crate) fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// An optional JSON object body (`{"name": "..."}` on clones): empty is allowed.
pub(crate) fn optional_name(body: &Bytes) -> Result<String, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Failure(ApiError::bad_request("The request body is not valid JSON")))?;
    crate::error::refuse_nul(&value)?;
    match value.get("name") {
        None | Some(Value::Null) if value.is_object() => Ok(String::new()),
        Some(Value::String(name)) => Ok(name.clone()),
        _ => Err(Failure(ApiError::bad_request("The body is optional; when sent it is {\"name\": \"...\"}"))),
    }
}
