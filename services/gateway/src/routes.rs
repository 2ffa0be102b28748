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
use oa_domain::{ApiError, Caller, Permission};
use oa_proto::agents as agents_pb;
use oa_proto::catalog as catalog_pb;
use oa_proto::credits as credits_pb;
use oa_proto::executions as executions_pb;
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
        .route("/events/publish", post(publish_event))
        .route("/events/dead-letter", get(list_dead_letters))
        .route("/events/dead-letter/{id}/replay", post(replay_dead_letter))
        .route("/executions", get(list_executions))
        .route("/executions/{id}", get(get_execution))
        .route("/executions/{id}/cancel", post(cancel_execution))
        .route("/executions/{id}/retry", post(retry_execution))
        .route("/credits", get(credits_usage))
        .route("/credits/history", get(credits_history))
        .route("/org/settings", get(get_org_settings).put(put_org_settings))
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

/// Routes that start paid work answer 402 when the org has nothing left this month. The check
/// reads usage as the plane (any caller may start work); when the credits service cannot answer,
/// the work is accepted and the metered steps themselves refuse to overdraw.
async fn require_credit(state: &AppState, caller: &Caller) -> Result<(), Failure> {
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
    Failure(ApiError::from_status(&status))
}

/// Parses JSON a service produced.
pub(crate) fn service_json(text: &str) -> Result<Value, Failure> {
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
    crate::error::refuse_nul(&value)?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    source_product: String,
    event_type: String,
    payload: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /api/events/publish`: products without NATS access publish through the gateway. The
/// event is stored by JetStream before the 202; an id the product sends makes a resend a no-op.
async fn publish_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<PublishBody>,
) -> ApiResult<Response> {
    caller.require(Permission::PublishEvents)?;
    require_credit(&state, &caller).await?;
    let id = format!("{}:{}", body.source_product, body.event_type);
    if oa_domain::catalog::split_event_type_id(&id).is_none() {
        return Err(ApiError::bad_request(
            "source_product and event_type are lowercase names such as psa and ticket.created",
        )
        .into());
    }
    if !body.payload.is_object() {
        return Err(ApiError::bad_request("payload is a JSON object").into());
    }
    let mut envelope =
        oa_bus::Envelope::new(&caller.org_id, &body.source_product, &body.event_type, body.payload);
    if let Some(event_id) = body.id {
        if !oa_domain::ids::has_prefix(&event_id, "evt") {
            return Err(ApiError::bad_request("id, when given, looks like evt_<letters and digits>").into());
        }
        envelope.id = event_id;
    }
    if body.client_id.is_some() {
        envelope.client_id = body.client_id;
    }
    if let Some(occurred_at) = body.occurred_at {
        envelope.occurred_at = occurred_at;
    }
    let Some(nats) = &state.nats else {
        return Err(ApiError::unavailable("event bus").into());
    };
    let jetstream = oa_bus::async_nats::jetstream::new(nats.clone());
    oa_bus::publish_event(&jetstream, &state.topology, &envelope).await.map_err(|error| {
        tracing::error!(%error, "cannot publish an event");
        ApiError::unavailable("event bus")
    })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": envelope.id, "status": "accepted" }))).into_response())
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<u32>,
}

async fn list_dead_letters(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> ApiResult<Json<Value>> {
    let request = executions_pb::ListDeadLettersRequest { limit: query.limit.unwrap_or(0) };
    let response = state
        .executions
        .clone()
        .list_dead_letters(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    let letters = response
        .dead_letters
        .iter()
        .map(|l| service_json(&l.dead_letter_json))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "dead_letters": letters })))
}

async fn replay_dead_letter(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Permission::ControlExecutions)?;
    // A replay runs the event's agents again: paid work, refused like a publish when nothing is left.
    require_credit(&state, &caller).await?;
    let request = executions_pb::ReplayDeadLetterRequest { id };
    let letter = state
        .executions
        .clone()
        .replay_dead_letter(state.outgoing(request, &caller))
        .await
        .map_err(grpc)?
        .into_inner();
    Ok((StatusCode::ACCEPTED, Json(service_json(&letter.dead_letter_json)?)))
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
