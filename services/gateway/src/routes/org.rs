//! The org's own settings: contacts and webhooks.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::routing::get;
use oa_domain::Caller;
use oa_proto::agents as agents_pb;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiJson, ApiResult};
use crate::forward::{grpc, service_json};

pub fn router() -> Router<AppState> {
    Router::new().route("/org/settings", get(get_org_settings).put(put_org_settings))
}

/// The org's contacts and its own webhooks (URLs masked but for their host); admins only.
async fn get_org_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::GetOrgSettingsRequest {};
    let settings = state
        .agents
        .clone()
        .get_org_settings(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(service_json(&settings.settings_json)?))
}

/// Replaces the sections sent (`contacts`, `webhooks`); a webhook sent back masked is kept.
async fn put_org_settings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::PutOrgSettingsRequest { settings_json: body.to_string() };
    let settings = state
        .agents
        .clone()
        .put_org_settings(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(service_json(&settings.settings_json)?))
}
