//! Event types of the catalog: what products publish, and which payload fields agents may filter on.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The categories an event type may have, as text (`EventCategory`'s string forms).
pub use crate::status::EventCategory;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Enum,
    String,
    Number,
    Boolean,
    Datetime,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Enum => "enum",
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Datetime => "datetime",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterableField {
    pub path: String,
    pub label: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventType {
    /// `<source_product>:<event_type>`.
    pub id: String,
    pub source_product: String,
    pub event_type: String,
    pub display_name: String,
    pub description: String,
    pub category: String,
    pub filterable_fields: Vec<FilterableField>,
    pub sample_payload: Value,
}

impl EventType {
    pub fn id_of(source_product: &str, event_type: &str) -> String {
        format!("{source_product}:{event_type}")
    }

    pub fn field(&self, path: &str) -> Option<&FilterableField> {
        self.filterable_fields.iter().find(|f| f.path == path)
    }
}

/// Splits `<source_product>:<event_type>` when both parts are well formed: lowercase letters,
/// digits, `_`, and dots inside the event type.
pub fn split_event_type_id(id: &str) -> Option<(&str, &str)> {
    let (product, event) = id.split_once(':')?;
    let product_ok = !product.is_empty()
        && product.len() <= 40
        && product.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let event_ok = !event.is_empty()
        && event.len() <= 80
        && event.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !event.starts_with('.')
        && !event.ends_with('.');
    (product_ok && event_ok).then_some((product, event))
}

/// The event types shipped with the plane (PSA, RMM, Defend, Backup, Billing and Hub), which the
/// catalog seeds and the agents service's tests validate against.
pub fn shipped_event_types() -> Vec<EventType> {
    let raw: Vec<serde_json::Value> = serde_json::from_str(include_str!("../catalogue/event_types.json"))
        .expect("the shipped catalog is valid JSON");
    raw.into_iter()
        .map(|mut value| {
            let id = EventType::id_of(
                value["source_product"].as_str().unwrap_or_default(),
                value["event_type"].as_str().unwrap_or_default(),
            );
            value["id"] = id.into();
            serde_json::from_value(value).expect("the shipped catalog has the event type shape")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_ids_split_only_when_well_formed() {
        assert_eq!(split_event_type_id("psa:ticket.created"), Some(("psa", "ticket.created")));
        assert_eq!(split_event_type_id("psa:"), None);
        assert_eq!(split_event_type_id("PSA:ticket"), None);
        assert_eq!(split_event_type_id("psa:ticket created"), None);
        assert_eq!(split_event_type_id("psaticket"), None);
    }
}
