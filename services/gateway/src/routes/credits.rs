//! Credits: the month's usage and its history.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::routing::get;
use oa_domain::Caller;
use oa_proto::credits as credits_pb;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiQuery, ApiResult};
use crate::forward::{grpc, service_json};

pub fn router() -> Router<AppState> {
    Router::new().route("/credits", get(credits_usage)).route("/credits/history", get(credits_history))
}

#[derive(Deserialize)]
struct MonthQuery {
    month: Option<String>,
}

async fn credits_usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<MonthQuery>,
) -> ApiResult<Json<Value>> {
    let request = credits_pb::GetUsageRequest { month: query.month.unwrap_or_default() };
    let usage =
        state.credits.clone().get_usage(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(Json(service_json(&usage.usage_json)?))
}

async fn credits_history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    let request = credits_pb::GetHistoryRequest {};
    let history =
        state.credits.clone().get_history(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(Json(service_json(&history.history_json)?))
}
