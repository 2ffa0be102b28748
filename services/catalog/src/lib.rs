//! The event catalog service (`oneagents.catalog.v1.Catalog`): which event types products publish,
//! the payload fields agents may filter on, and a sample payload for each.
//!
//! Owns schema `catalog`, which is global (not org-owned). It asks the agents service which fields
//! agents filter on before a product may change an event type, and touches no other schema.

mod error;
mod seed;
mod store;

use oa_domain::catalog::{EventCategory, EventType, FieldType, split_event_type_id};
use oa_domain::{ApiError, Caller, ErrorCode, Permission};
use oa_proto::agents::FieldsInUseRequest;
use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::catalog as pb;
use oa_proto::catalog::catalog_server::{Catalog, CatalogServer};
use secrecy::SecretString;
use sqlx::PgPool;
use strum::VariantNames;
use tonic::transport::Channel;

pub use error::CatalogError;
pub use seed::{seed_catalog, shipped_event_types};
pub use store::CatalogStore;

pub struct CatalogService {
    store: CatalogStore,
    agents: AgentsClient<Channel>,
    service_token: SecretString,
}

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;
type Result<T, E = CatalogError> = std::result::Result<T, E>;

pub type GuardedCatalog = tonic::service::interceptor::InterceptedService<
    CatalogServer<CatalogService>,
    oa_auth::service::ServiceGuard,
>;

impl CatalogService {
    /// The service behind the service-credential guard, ready for a tonic server.
    pub fn build(pool: PgPool, config: &oa_config::Config) -> Result<GuardedCatalog, ApiError> {
        let agents = AgentsClient::new(oa_auth::service::channel(
            config.endpoint("agents").map_err(|e| ApiError::internal_from("config", &e))?,
            &config.grpc,
        )?);
        let service = CatalogService {
            store: CatalogStore::new(pool),
            agents,
            service_token: config.grpc.service_token.clone(),
        };
        Ok(CatalogServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        ))
    }
}

/// Checks a registration and returns the event type it describes, or every problem found.
pub fn validate_event_type(id: &str, body: &serde_json::Value) -> Result<EventType, ApiError> {
    let invalid = |details: Vec<serde_json::Value>| {
        ApiError::bad_request("The event type failed validation")
            .with_details(serde_json::Value::Array(details))
    };
    let Some((product, event)) = split_event_type_id(id) else {
        return Err(invalid(vec![serde_json::json!({
            "path": "id",
            "message": "an event type id is <source_product>:<event_type> in lowercase letters, digits, '_' and '.'"
        })]));
    };
    let mut object = body.as_object().cloned().unwrap_or_default();
    object.insert("id".into(), id.into());
    object.insert("source_product".into(), product.into());
    object.insert("event_type".into(), event.into());
    let event_type: EventType = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| invalid(vec![serde_json::json!({"path": "", "message": e.to_string()})]))?;

    let mut details = Vec::new();
    let mut problem =
        |path: String, message: &str| details.push(serde_json::json!({"path": path, "message": message}));
    if event_type.display_name.trim().is_empty() || event_type.display_name.len() > 200 {
        problem("display_name".into(), "display_name needs 1 to 200 characters");
    }
    if event_type.description.len() > 2000 {
        problem("description".into(), "description is at most 2000 characters");
    }
    if event_type.category.parse::<EventCategory>().is_err() {
        problem(
            "category".into(),
            "category is one of service_desk, security, operations, finance, compliance, communications, onboarding, client_success",
        );
    }
    if !event_type.sample_payload.is_object() {
        problem("sample_payload".into(), "sample_payload is a JSON object");
    }
    let mut seen = std::collections::HashSet::new();
    for (index, field) in event_type.filterable_fields.iter().enumerate() {
        let path = format!("filterable_fields[{index}]");
        let path_ok = !field.path.is_empty()
            && field
                .path
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !path_ok {
            problem(format!("{path}.path"), "a field path is dotted names of letters, digits and '_'");
        }
        if !seen.insert(field.path.clone()) {
            problem(format!("{path}.path"), "this field path is listed twice");
        }
        match (&field.field_type, &field.enum_values) {
            (FieldType::Enum, Some(values)) if !values.is_empty() => {}
            (FieldType::Enum, _) => {
                problem(format!("{path}.enum_values"), "an enum field lists its enum_values")
            }
            (_, Some(_)) => problem(format!("{path}.enum_values"), "only enum fields have enum_values"),
            _ => {}
        }
    }
    if details.is_empty() { Ok(event_type) } else { Err(invalid(details)) }
}

/// The methods behind the gRPC handlers: each takes the resolved caller and returns the
/// service's error, which the handler maps once.
impl CatalogService {
    async fn list(
        &self,
        caller: Caller,
        request: pb::ListEventTypesRequest,
    ) -> Result<pb::ListEventTypesResponse> {
        caller.require(Permission::ReadCatalog)?;
        let filter = request;
        if !filter.category.is_empty() && filter.category.parse::<EventCategory>().is_err() {
            return Err(ApiError::bad_request(format!(
                "category must be one of {}",
                EventCategory::VARIANTS.join(", ")
            ))
            .into());
        }
        let events = self.store.list(&filter.source_product, &filter.category).await?;
        Ok(pb::ListEventTypesResponse { events: events.iter().map(oa_clients::catalog::to_proto).collect() })
    }

    async fn get(&self, caller: Caller, request: pb::GetEventTypeRequest) -> Result<pb::EventType> {
        caller.require(Permission::ReadCatalog)?;
        let id = request.id;
        match self.store.get(&id).await? {
            Some(event_type) => Ok(oa_clients::catalog::to_proto(&event_type)),
            None => Err(not_found(&id)),
        }
    }

    async fn put(
        &self,
        caller: Caller,
        request: pb::PutEventTypeRequest,
    ) -> Result<pb::PutEventTypeResponse> {
        caller.require(Permission::WriteCatalog)?;
        // The catalog is shared by every org: a product writes its own event types, nobody else's.
        let source_product = oa_domain::catalog::split_event_type_id(&request.id).map(|(product, _)| product);
        match &caller.principal {
            // An id that is not `<product>:<event>` is answered by validation (400).
            oa_domain::Principal::Product { product, .. }
                if source_product.is_none_or(|source| source == product.as_str()) => {}
            oa_domain::Principal::Service { .. } => {}
            oa_domain::Principal::Product { product, .. } => {
                return Err(ApiError::forbidden(format!(
                    "A key of {product} writes only {product}'s event types"
                ))
                .into());
            }
            _ => return Err(ApiError::forbidden("Only a product's own key writes the event catalog").into()),
        }
        let body: serde_json::Value = serde_json::from_str(&request.definition_json)
            .map_err(|_| ApiError::bad_request("The request body is not valid JSON"))?;
        let event_type = validate_event_type(&request.id, &body)?;

        // Agents that filter on a field of this event type keep working only if it stays.
        let in_use = self
            .agents
            .clone()
            .fields_in_use(oa_auth::service::outgoing(
                FieldsInUseRequest { event_type_id: event_type.id.clone() },
                &caller,
                &self.service_token,
            ))
            .await
            .map_err(|status| oa_proto::status::api_error(&status))?
            .into_inner()
            .fields;
        let missing: Vec<&String> = in_use.iter().filter(|path| event_type.field(path).is_none()).collect();
        if !missing.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "Agents filter on fields this update removes; update those agents first",
            )
            .with_details(serde_json::json!({ "fields_in_use": missing }))
            .into());
        }
        let created = self.store.upsert(&event_type, &caller.principal_label()).await?;
        Ok(pb::PutEventTypeResponse { event_type: Some(oa_clients::catalog::to_proto(&event_type)), created })
    }
}

#[tonic::async_trait]
impl Catalog for CatalogService {
    async fn list_event_types(
        &self,
        request: tonic::Request<pb::ListEventTypesRequest>,
    ) -> GrpcResult<pb::ListEventTypesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list(caller, request.into_inner()).await?))
    }

    async fn get_event_type(
        &self,
        request: tonic::Request<pb::GetEventTypeRequest>,
    ) -> GrpcResult<pb::EventType> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.get(caller, request.into_inner()).await?))
    }

    async fn put_event_type(
        &self,
        request: tonic::Request<pb::PutEventTypeRequest>,
    ) -> GrpcResult<pb::PutEventTypeResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.put(caller, request.into_inner()).await?))
    }
}

fn not_found(id: &str) -> CatalogError {
    CatalogError::NotFound(id.to_owned())
}
