//! `GET /api/me`: who the plane thinks the caller is.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use oa_domain::{ApiError, Caller, ErrorCode};
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
    let principal = serde_json::to_value(&caller.principal).map_err(|e| ApiError::internal_from("me", &e))?;
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
