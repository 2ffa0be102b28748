//! The catalog's event types to and from their proto messages, and fetching one.

use oa_domain::catalog::{EventType, FieldType, FilterableField};
use oa_domain::{ApiError, ErrorCode};
use oa_proto::catalog as pb;
use secrecy::SecretString;
use tonic::transport::Channel;

pub fn to_proto(event_type: &EventType) -> pb::EventType {
    pb::EventType {
        id: event_type.id.clone(),
        source_product: event_type.source_product.clone(),
        event_type: event_type.event_type.clone(),
        display_name: event_type.display_name.clone(),
        description: event_type.description.clone(),
        category: event_type.category.clone(),
        filterable_fields: event_type
            .filterable_fields
            .iter()
            .map(|f| pb::FilterableField {
                path: f.path.clone(),
                label: f.label.clone(),
                r#type: f.field_type.as_str().to_owned(),
                enum_values: f.enum_values.clone().unwrap_or_default(),
            })
            .collect(),
        sample_payload_json: event_type.sample_payload.to_string(),
    }
}

pub fn field_type(name: &str) -> Option<FieldType> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// The inverse of [`to_proto`], for clients of the catalog (the agents service, the worker).
pub fn from_proto(message: pb::EventType) -> Option<EventType> {
    let filterable_fields = message
        .filterable_fields
        .into_iter()
        .map(|f| {
            let field_type = field_type(&f.r#type)?;
            let enum_values = (field_type == FieldType::Enum).then_some(f.enum_values);
            Some(FilterableField { path: f.path, label: f.label, field_type, enum_values })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(EventType {
        id: message.id,
        source_product: message.source_product,
        event_type: message.event_type,
        display_name: message.display_name,
        description: message.description,
        category: message.category,
        filterable_fields,
        sample_payload: serde_json::from_str(&message.sample_payload_json).ok()?,
    })
}

/// Fetches one event type from the catalog (for the agents service and the worker); `None` when
/// the catalog does not have it.
pub async fn fetch_event_type(
    client: &mut pb::catalog_client::CatalogClient<Channel>,
    caller: &oa_domain::Caller,
    token: &SecretString,
    id: &str,
) -> Result<Option<EventType>, ApiError> {
    let request = oa_auth::service::outgoing(pb::GetEventTypeRequest { id: id.to_owned() }, caller, token);
    match client.get_event_type(request).await {
        Ok(response) => from_proto(response.into_inner())
            .map(Some)
            .ok_or_else(|| ApiError::internal_from("catalog", &"malformed event type from the catalog")),
        Err(status) => {
            let error = oa_proto::status::api_error(&status);
            if error.code == ErrorCode::EventTypeNotFound { Ok(None) } else { Err(error) }
        }
    }
}
