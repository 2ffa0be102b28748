//! The catalog shipped with the plane: event types of PSA, RMM, Defend, Backup, Billing and Hub.
//! Seeding inserts what is missing and never overwrites a product's own registration.

use oa_domain::catalog::EventType;
use oa_store::StoreError;
use sqlx::PgPool;

use crate::CatalogStore;

const SEED: &str = include_str!("../seed/event_types.json");

/// The shipped event types.
pub fn shipped_event_types() -> Vec<EventType> {
    let raw: Vec<serde_json::Value> = serde_json::from_str(SEED).expect("the shipped catalog is valid JSON");
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

pub async fn seed_catalog(pool: &PgPool) -> Result<(), StoreError> {
    let store = CatalogStore::new(pool.clone());
    for event_type in shipped_event_types() {
        store.insert_if_absent(&event_type).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_event_type_passes_registration_validation_and_carries_client_id() {
        let shipped = shipped_event_types();
        assert!(shipped.len() >= 24);
        for event_type in shipped {
            let body = serde_json::to_value(&event_type).unwrap();
            crate::validate_event_type(&event_type.id, &body)
                .unwrap_or_else(|e| panic!("{}: {e:?}", event_type.id));
            assert!(event_type.sample_payload.get("client_id").is_some(), "{}", event_type.id);
            for field in &event_type.filterable_fields {
                let mut value = &event_type.sample_payload;
                for part in field.path.split('.') {
                    value = value
                        .get(part)
                        .unwrap_or_else(|| panic!("{}: sample lacks {}", event_type.id, field.path));
                }
            }
        }
    }
}
