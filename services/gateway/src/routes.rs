//! The REST routes of the API reference that services answer: agents, templates and the event
//! catalog. Each handler parses the request, forwards it over gRPC with the caller, and shapes the
//! answer; services own the rules and the permissions.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use oa_domain::{ApiError, Caller};
use oa_proto::agents as agents_pb;
use oa_proto::catalog as catalog_pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiJson, ApiQuery, ApiResult, Failure};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list_agents).post(create_agent))
        .route("/agents/{id}", get(get_agent).put(update_agent).delete(delete_agent))
        .route("/agents/{id}/clone", post(clone_agent))
        .route("/agents/{id}/versions", get(list_agent_versions))
        .route("/templates", get(list_templates))
        .route("/templates/{id}/clone", post(clone_template))
        .route("/events", get(list_events))
        .route("/events/{id}", get(get_event).put(put_event))
}

fn grpc(status: tonic::Status) -> Failure {
    Failure(ApiError::from_status(&status))
}

/// Parses JSON a service produced.
fn service_json(text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure(ApiError::internal_from("service answer", &e)))
}

fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// An optional JSON object body (`{"name": "..."}` on clones): empty is allowed.
fn optional_name(body: &Bytes) -> Result<String, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Failure(ApiError::bad_request("The request body is not valid JSON")))?;
    match value.get("name") {
        None | Some(Value::Null) if value.is_object() => Ok(String::new()),
        Some(Value::String(name)) => Ok(name.clone()),
        _ => Err(Failure(ApiError::bad_request("The body is optional; when sent it is {\"name\": \"...\"}"))),
    }
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

fn event_json(event: &catalog_pb::EventType) -> Result<Value, Failure> {
    let fields: Vec<Value> = event
        .filterable_fields
        .iter()
        .map(|f| {
            let mut field = json!({ "path": f.path, "label": f.label, "type": f.r#type });
            if f.r#type == "enum" {
                field["enum_values"] = json!(f.enum_values);
            }
            field
        })
        .collect();
    Ok(json!({
        "id": event.id,
        "source_product": event.source_product,
        "event_type": event.event_type,
        "display_name": event.display_name,
        "description": event.description,
        "category": event.category,
        "filterable_fields": fields,
        "sample_payload": service_json(&event.sample_payload_json)?,
    }))
}

#[derive(Deserialize)]
struct EventsQuery {
    source_product: Option<String>,
    category: Option<String>,
}

async fn list_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let request = catalog_pb::ListEventTypesRequest {
        source_product: query.source_product.unwrap_or_default(),
        category: query.category.unwrap_or_default(),
    };
    let response = state
        .catalog
        .clone()
        .list_event_types(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let events = response.events.iter().map(event_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "events": events })))
}

async fn get_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let request = catalog_pb::GetEventTypeRequest { id };
    let event = state
        .catalog
        .clone()
        .get_event_type(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok(Json(event_json(&event)?))
}

async fn put_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let request = catalog_pb::PutEventTypeRequest { id, definition_json: body.to_string() };
    let response = state
        .catalog
        .clone()
        .put_event_type(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let event =
        response.event_type.ok_or_else(|| Failure(ApiError::internal_from("catalog", &"no event type")))?;
    let status = if response.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(event_json(&event)?)).into_response())
}
