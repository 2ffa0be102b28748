//! The event catalog, publishing through the gateway, and the dead letters.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use oa_domain::{ApiError, Caller, Permission};
use oa_proto::catalog as catalog_pb;
use oa_proto::executions as executions_pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiJson, ApiQuery, ApiResult, Failure};
use crate::forward::{grpc, require_credit, service_json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/{id}", get(get_event).put(put_event))
        .route("/events/publish", post(publish_event))
        .route("/events/dead-letter", get(list_dead_letters))
        .route("/events/dead-letter/{id}/replay", post(replay_dead_letter))
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
        if !oa_domain::ids::EventId::is_well_formed(&event_id) {
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
