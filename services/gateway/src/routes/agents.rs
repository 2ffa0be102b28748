//! Agents and templates: list, create, read, update, delete, clone, versions.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use oa_domain::Caller;
use oa_proto::agents as agents_pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiJson, ApiQuery, ApiResult};
use crate::forward::{created, grpc, optional_name, service_json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{id}", get(get_agent).put(update_agent).delete(delete_agent))
        .route("/agents/{id}/clone", post(clone_agent))
        .route("/agents/{id}/versions", get(list_agent_versions))
        .route("/templates", get(list_templates))
        .route("/templates/{id}/clone", post(clone_template))
}

#[derive(Deserialize)]
struct AgentsQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    agent_type: Option<String>,
    category: Option<String>,
}

async fn list_agents(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<AgentsQuery>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::ListAgentsRequest {
        status: query.status.unwrap_or_default(),
        r#type: query.agent_type.unwrap_or_default(),
        category: query.category.unwrap_or_default(),
    };
    let response =
        state.agents.clone().list_agents(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    let agents =
        response.agents.iter().map(|a| service_json(&a.agent_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "agents": agents, "total": response.total })))
}

async fn create_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let request = agents_pb::CreateAgentRequest { definition_json: body.to_string() };
    let agent =
        state.agents.clone().create_agent(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(created(service_json(&agent.agent_json)?))
}

async fn get_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::GetAgentRequest { id };
    let agent =
        state.agents.clone().get_agent(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(Json(service_json(&agent.agent_json)?))
}

async fn update_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::UpdateAgentRequest { id, patch_json: body.to_string() };
    let agent =
        state.agents.clone().update_agent(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(Json(service_json(&agent.agent_json)?))
}

async fn delete_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let request = agents_pb::DeleteAgentRequest { id };
    state.agents.clone().delete_agent(state.outgoing(request, &caller)).await.map_err(grpc)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clone_agent(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request = agents_pb::CloneAgentRequest { id, name: optional_name(&body)? };
    let agent =
        state.agents.clone().clone_agent(state.outgoing(request, &caller)).await.map_err(grpc)?.into_inner();
    Ok(created(service_json(&agent.agent_json)?))
}

async fn list_agent_versions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::ListAgentVersionsRequest { id, page: None };
    let response = state
        .agents
        .clone()
        .list_agent_versions(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let versions =
        response.versions.iter().map(|v| service_json(&v.definition_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "versions": versions })))
}

#[derive(Deserialize)]
struct CategoryQuery {
    category: Option<String>,
}

async fn list_templates(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<CategoryQuery>,
) -> ApiResult<Json<Value>> {
    let request = agents_pb::ListTemplatesRequest { category: query.category.unwrap_or_default() };
    let response = state
        .agents
        .clone()
        .list_templates(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let templates =
        response.templates.iter().map(|t| service_json(&t.template_json)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "templates": templates })))
}

async fn clone_template(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request = agents_pb::CloneTemplateRequest { id, name: optional_name(&body)? };
    let agent = state
        .agents
        .clone()
        .clone_template(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(created(service_json(&agent.agent_json)?))
}
