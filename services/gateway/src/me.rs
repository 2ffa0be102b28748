//! `GET /api/me`: who the plane thinks the caller is.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use oa_domain::{ApiError, Caller, ErrorCode, Principal};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;

pub async fn me(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    let org = state
        .orgs
        .get(&caller.org_id)
        .await
        .map_err(|e| ApiError::internal_from("org lookup", &e))?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "Org not found"))?;
    let tier = state.config.tiers.get(&org.tier);
    let principal = match &caller.principal {
        Principal::User { sub, role } => {
            json!({ "type": "user", "sub": sub, "role": role.as_str() })
        }
        Principal::IntegrationKey { key_id, scopes } => json!({
            "type": "integration_key",
            "key_id": key_id,
            "scopes": scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        }),
    };
    Ok(Json(json!({
        "org_id": org.id,
        "org": {
            "id": org.id,
            "name": org.name,
            "tier": org.tier,
            "monthly_credits": org.monthly_credits_override.or(tier.map(|t| t.monthly_credits)),
            "max_active_agents": tier.map(|t| t.max_active_agents),
        },
        "principal": principal,
    })))
}
