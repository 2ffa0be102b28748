//! Queries on schema `tenancy`: orgs, integration keys and product keys. The callers in
//! [`crate::OrgStore`] and [`crate::KeyStore`] check what they are given, make and hash secrets,
//! and pick the transaction (an org-scoped one, or the key-lookup scope before any org is known).

use sqlx::PgConnection;

use crate::{IntegrationKey, Org, ProductKey};

macro_rules! org_columns {
    () => {
        "id, name, tier, monthly_credits_override, dispatch_weight, max_running, created_at"
    };
}
macro_rules! key_columns {
    () => {
        "id, org_id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at"
    };
}
macro_rules! product_key_columns {
    () => {
        "id, product, name, prefix, created_by, created_at, last_used_at, revoked_at"
    };
}

/// Inserts an org; `None` when the id is taken.
pub async fn insert_org(
    conn: &mut PgConnection,
    id: &str,
    name: &str,
    tier: &str,
) -> Result<Option<Org>, sqlx::Error> {
    let sql = concat!(
        "INSERT INTO tenancy.orgs (id, name, tier) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING ",
        org_columns!()
    );
    sqlx::query_as(sql).bind(id).bind(name).bind(tier).fetch_optional(conn).await
}

pub async fn org(conn: &mut PgConnection, id: &str) -> Result<Option<Org>, sqlx::Error> {
    let sql = concat!("SELECT ", org_columns!(), " FROM tenancy.orgs WHERE id = $1");
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

pub async fn org_tier(conn: &mut PgConnection, id: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT tier FROM tenancy.orgs WHERE id = $1").bind(id).fetch_one(conn).await
}

/// Sets or clears an org's monthly credit override; `None` when there is no such org.
pub async fn set_credit_override(
    conn: &mut PgConnection,
    id: &str,
    credits: Option<i64>,
) -> Result<Option<Org>, sqlx::Error> {
    let sql = concat!(
        "UPDATE tenancy.orgs SET monthly_credits_override = $2 WHERE id = $1 RETURNING ",
        org_columns!()
    );
    sqlx::query_as(sql).bind(id).bind(credits).fetch_optional(conn).await
}

/// Sets (or, with `None`, clears) an org's dispatch weight and cap on running executions.
pub async fn set_dispatch_override(
    conn: &mut PgConnection,
    id: &str,
    weight: Option<i32>,
    max_running: Option<i32>,
) -> Result<Option<Org>, sqlx::Error> {
    let sql = concat!(
        "UPDATE tenancy.orgs SET dispatch_weight = $2, max_running = $3 WHERE id = $1 RETURNING ",
        org_columns!()
    );
    sqlx::query_as(sql).bind(id).bind(weight).bind(max_running).fetch_optional(conn).await
}

/// How the dispatcher treats each of `ids`: its tier and the operator's overrides. Reads across
/// orgs, in a transaction that set `app.dispatcher`.
pub async fn dispatch_settings(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<(String, String, Option<i32>, Option<i32>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, tier, dispatch_weight, max_running FROM tenancy.orgs WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// A key to store: its secret only as a hash.
pub struct NewKey<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub scopes: &'a [String],
    pub created_by: &'a str,
}

/// Inserts an org's key; `None` when the org does not exist.
pub async fn insert_key(
    conn: &mut PgConnection,
    key: &NewKey<'_>,
) -> Result<Option<IntegrationKey>, sqlx::Error> {
    let sql = concat!(
        "INSERT INTO tenancy.integration_keys (id, org_id, name, prefix, secret_hash, scopes, created_by)
         SELECT $1, o.id, $3, $4, $5, $6, $7 FROM tenancy.orgs o WHERE o.id = $2
         RETURNING ",
        key_columns!()
    );
    sqlx::query_as(sql)
        .bind(key.id)
        .bind(key.org_id)
        .bind(key.name)
        .bind(key.prefix)
        .bind(key.secret_hash)
        .bind(key.scopes)
        .bind(key.created_by)
        .fetch_optional(conn)
        .await
}

pub async fn keys_of_org(conn: &mut PgConnection, org_id: &str) -> Result<Vec<IntegrationKey>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        key_columns!(),
        " FROM tenancy.integration_keys WHERE org_id = $1 ORDER BY created_at DESC"
    );
    sqlx::query_as(sql).bind(org_id).fetch_all(conn).await
}

/// Revokes an org's key (a revoked key stays revoked at its first time); false when it has none.
pub async fn revoke_key(conn: &mut PgConnection, org_id: &str, key_id: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE tenancy.integration_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND org_id = $2",
    )
    .bind(key_id)
    .bind(org_id)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// What checking a presented key needs: its hash and whether it was revoked.
#[derive(sqlx::FromRow)]
pub struct KeyLookup {
    pub id: String,
    /// The org of an org's key; the product of a product key.
    pub owner: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub revoked: bool,
}

/// Looks up an org's key by prefix, in a transaction scoped to that prefix (row-level security
/// lets it see that key alone).
pub async fn key_by_prefix(conn: &mut PgConnection, prefix: &str) -> Result<Option<KeyLookup>, sqlx::Error> {
    sqlx::query("SELECT set_config('app.key_prefix', $1, true)").bind(prefix).execute(&mut *conn).await?;
    sqlx::query_as(
        "SELECT id, org_id AS owner, secret_hash, scopes, revoked_at IS NOT NULL AS revoked
         FROM tenancy.integration_keys WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(conn)
    .await
}

/// Scopes the rest of the transaction to `org_id`.
pub async fn scope_to_org(conn: &mut PgConnection, org_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(org_id).execute(conn).await?;
    Ok(())
}

/// Notes a key's use, at most once a minute, so a busy key does not write per request.
pub async fn touch_key(conn: &mut PgConnection, key_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenancy.integration_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
    )
    .bind(key_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn product_key_by_prefix(
    conn: &mut PgConnection,
    prefix: &str,
) -> Result<Option<KeyLookup>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, product AS owner, secret_hash, ARRAY[]::text[] AS scopes, revoked_at IS NOT NULL AS revoked
         FROM tenancy.product_keys WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(conn)
    .await
}

pub async fn touch_product_key(conn: &mut PgConnection, key_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenancy.product_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
    )
    .bind(key_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A product's key to store: its secret only as a hash.
pub struct NewProductKey<'a> {
    pub id: &'a str,
    pub product: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub created_by: &'a str,
}

pub async fn insert_product_key(
    conn: &mut PgConnection,
    key: &NewProductKey<'_>,
) -> Result<ProductKey, sqlx::Error> {
    let sql = concat!(
        "INSERT INTO tenancy.product_keys (id, product, name, prefix, secret_hash, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        product_key_columns!()
    );
    sqlx::query_as(sql)
        .bind(key.id)
        .bind(key.product)
        .bind(key.name)
        .bind(key.prefix)
        .bind(key.secret_hash)
        .bind(key.created_by)
        .fetch_one(conn)
        .await
}

pub async fn product_keys(conn: &mut PgConnection, product: &str) -> Result<Vec<ProductKey>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        product_key_columns!(),
        " FROM tenancy.product_keys WHERE product = $1 ORDER BY created_at DESC"
    );
    sqlx::query_as(sql).bind(product).fetch_all(conn).await
}

/// Revokes a product's key; false when the product has no such key.
pub async fn revoke_product_key(
    conn: &mut PgConnection,
    product: &str,
    key_id: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE tenancy.product_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND product = $2",
    )
    .bind(key_id)
    .bind(product)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
