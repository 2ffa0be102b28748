//! Executions: list, read, cancel, retry.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::routing::{get, post};
use http::StatusCode;
use oa_domain::{ApiError, Caller, Permission};
use oa_proto::agents as agents_pb;
use oa_proto::executions as executions_pb;
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiQuery, ApiResult, Failure};
use crate::forward::{grpc, page_body, page_request, require_credit, service_json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/executions", get(list_executions))
        .route("/executions/{id}", get(get_execution))
        .route("/executions/{id}/cancel", post(cancel_execution))
        .route("/executions/{id}/retry", post(retry_execution))
}

#[derive(Deserialize)]
struct ExecutionsQuery {
    agent_id: Option<String>,
    status: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_executions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<ExecutionsQuery>,
) -> ApiResult<Json<Value>> {
    let request = executions_pb::ListExecutionsRequest {
        agent_id: query.agent_id.unwrap_or_default(),
        status: query.status.unwrap_or_default(),
        from: query.from.unwrap_or_default(),
        to: query.to.unwrap_or_default(),
        page: Some(page_request(query.limit, query.cursor)?),
    };
    let response = state
        .executions
        .clone()
        .list_executions(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let executions =
        response.executions.iter().map(|e| service_json(&e.execution_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(page_body("executions", executions, response.page))
}

/// A retry runs the execution's agent again: refused with 409 once that agent was deleted. An
/// execution the caller cannot see is left for the retry itself to answer (404).
async fn require_agent_of_execution(state: &AppState, caller: &Caller, id: &str) -> Result<(), Failure> {
    let request = executions_pb::GetExecutionRequest { id: id.to_owned() };
    let Ok(execution) = state.executions.clone().get_execution(state.outgoing(request, caller)).await else {
        return Ok(());
    };
    let execution = service_json(&execution.into_inner().execution_json)?;
    let agent_id = execution["agent_id"].as_str().unwrap_or_default().to_owned();
    let plane = Caller::service("gateway", &caller.org_id);
    let request = agents_pb::GetAgentRequest { id: agent_id.clone() };
    match state.agents.clone().get_agent(state.outgoing(request, &plane)).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Err(Failure(ApiError::new(
            oa_domain::ErrorCode::Conflict,
            format!("Agent {agent_id} was deleted: its executions can no longer be retried"),
        ))),
        Err(status) => Err(grpc(status)),
    }
}

async fn get_execution(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = executions_pb::GetExecutionRequest { id };
    let execution = state
        .executions
        .clone()
        .get_execution(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(service_json(&execution.execution_json)?))
}

async fn cancel_execution(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = executions_pb::CancelExecutionRequest { id };
    let execution = state
        .executions
        .clone()
        .cancel_execution(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(service_json(&execution.execution_json)?))
}

async fn retry_execution(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::ControlExecutions)?;
    require_credit(&state, &caller).await?;
    require_agent_of_execution(&state, &caller, &id).await?;
    let request = executions_pb::RetryExecutionRequest { id };
    let execution = state
        .executions
        .clone()
        .retry_execution(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok((StatusCode::CREATED, Json(service_json(&execution.execution_json)?)))
}
