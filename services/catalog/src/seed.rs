//! The catalog shipped with the plane: event types of PSA, RMM, Defend, Backup, Billing and Hub.
//! Seeding inserts what is missing and never overwrites a product's own registration.

use oa_store::StoreError;
use sqlx::PgPool;

use crate::CatalogStore;

pub use oa_domain::catalog::shipped_event_types;

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
