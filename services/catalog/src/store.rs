//! Queries on `catalog.event_types`.

use oa_domain::catalog::EventType;
use oa_store::StoreError;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

// Shared by the upsert of a product and the seeding of the shipped catalog.
macro_rules! insert_event_type {
    () => {
        "INSERT INTO catalog.event_types
             (id, source_product, event_type, display_name, description, category,
              filterable_fields, sample_payload, registered_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    };
}

#[derive(Clone)]
pub struct CatalogStore {
    pool: PgPool,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<EventType, sqlx::Error> {
    Ok(EventType {
        id: row.try_get("id")?,
        source_product: row.try_get("source_product")?,
        event_type: row.try_get("event_type")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        filterable_fields: row.try_get::<Json<_>, _>("filterable_fields")?.0,
        sample_payload: row.try_get::<Json<_>, _>("sample_payload")?.0,
    })
}

impl CatalogStore {
    pub fn new(pool: PgPool) -> Self {
        CatalogStore { pool }
    }

    pub async fn list(&self, source_product: &str, category: &str) -> Result<Vec<EventType>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM catalog.event_types
             WHERE ($1 = '' OR source_product = $1) AND ($2 = '' OR category = $2)
             ORDER BY source_product, event_type",
        )
        .bind(source_product)
        .bind(category)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    pub async fn get(&self, id: &str) -> Result<Option<EventType>, StoreError> {
        let row = sqlx::query("SELECT * FROM catalog.event_types WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Inserts or replaces an event type; returns whether it was new.
    pub async fn upsert(&self, event_type: &EventType, registered_by: &str) -> Result<bool, StoreError> {
        let query = sqlx::query(concat!(
            insert_event_type!(),
            " ON CONFLICT (id) DO UPDATE SET
                 display_name = EXCLUDED.display_name, description = EXCLUDED.description,
                 category = EXCLUDED.category, filterable_fields = EXCLUDED.filterable_fields,
                 sample_payload = EXCLUDED.sample_payload, registered_by = EXCLUDED.registered_by,
                 updated_at = now()
             RETURNING (xmax = 0) AS inserted"
        ));
        let row = bind_event_type(query, event_type, registered_by).fetch_one(&self.pool).await?;
        Ok(row.try_get("inserted")?)
    }

    /// Inserts an event type unless one with its id exists (products' changes are kept).
    pub async fn insert_if_absent(&self, event_type: &EventType) -> Result<(), StoreError> {
        let query = sqlx::query(concat!(insert_event_type!(), " ON CONFLICT (id) DO NOTHING"));
        bind_event_type(query, event_type, "system").execute(&self.pool).await?;
        Ok(())
    }
}

fn bind_event_type<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    event_type: &'q EventType,
    registered_by: &'q str,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&event_type.id)
        .bind(&event_type.source_product)
        .bind(&event_type.event_type)
        .bind(&event_type.display_name)
        .bind(&event_type.description)
        .bind(&event_type.category)
        .bind(Json(&event_type.filterable_fields))
        .bind(Json(&event_type.sample_payload))
        .bind(registered_by)
}
