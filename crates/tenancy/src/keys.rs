//! Integration keys: creation (printed once), listing, revocation and resolution of a presented key.

use chrono::{DateTime, Utc};
use oa_domain::{Scope, ids};
use oa_store::begin_org;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use sqlx::{PgPool, Row};
use subtle::ConstantTimeEq;

use crate::TenancyError;

const KEY_PREFIX_LEN: usize = 12;
const KEY_SECRET_LEN: usize = 40;

/// A key as listed: never its secret.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct IntegrationKey {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created key with its plaintext, which exists only in this value.
#[derive(Debug)]
pub struct NewIntegrationKey {
    pub key: IntegrationKey,
    pub plaintext: String,
}

/// What a valid presented key resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedKey {
    pub key_id: String,
    pub org_id: String,
    pub tier: String,
    pub scopes: Vec<Scope>,
    /// For a product's key: the product whose event types it writes (its org is `system`).
    pub product: Option<String>,
}

/// A product's key as listed: never its secret.
#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct ProductKey {
    pub id: String,
    pub product: String,
    pub name: String,
    pub prefix: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The org a product key's caller belongs to.
pub const PRODUCT_ORG: &str = "system";

/// Splits `oak_<prefix>_<secret>` into its parts, if it has that shape.
fn parse_presented(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("oak_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let prefix_ok = prefix.len() == KEY_PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == KEY_SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (prefix_ok && secret_ok).then_some((prefix, secret))
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_string(len: usize, lowercase_only: bool) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| {
            let c = rng.sample(Alphanumeric) as char;
            if lowercase_only { c.to_ascii_lowercase() } else { c }
        })
        .collect()
}

macro_rules! key_columns {
    () => {
        "id, org_id, name, prefix, scopes, created_by, created_at, last_used_at, revoked_at"
    };
}

#[derive(Clone)]
pub struct KeyStore {
    pool: PgPool,
}

impl KeyStore {
    pub fn new(pool: PgPool) -> Self {
        KeyStore { pool }
    }

    pub async fn create(
        &self,
        org_id: &str,
        name: &str,
        scopes: &[Scope],
        created_by: &str,
    ) -> Result<NewIntegrationKey, TenancyError> {
        if scopes.is_empty() {
            return Err(TenancyError::Invalid("a key needs at least one scope".into()));
        }
        if scopes.contains(&Scope::CatalogWrite) {
            return Err(TenancyError::Invalid(
                "catalog:write belongs to product keys (keys create --product NAME), not to an org's keys"
                    .into(),
            ));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(TenancyError::Invalid("key name must have 1 to 200 characters".into()));
        }
        let prefix = random_string(KEY_PREFIX_LEN, true);
        let secret = random_string(KEY_SECRET_LEN, false);
        let scope_names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let mut tx = begin_org(&self.pool, org_id).await?;
        let row = sqlx::query(concat!(
            "INSERT INTO tenancy.integration_keys (id, org_id, name, prefix, secret_hash, scopes, created_by)
             SELECT $1, o.id, $3, $4, $5, $6, $7 FROM tenancy.orgs o WHERE o.id = $2
             RETURNING ",
            key_columns!()
        ))
        .bind(ids::new_id("key"))
        .bind(org_id)
        .bind(name)
        .bind(&prefix)
        .bind(hash_secret(&secret).to_vec())
        .bind(&scope_names)
        .bind(created_by)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(TenancyError::OrgNotFound(org_id.to_owned()));
        };
        let key = IntegrationKey::from_row(&row)?;
        tx.commit().await?;
        Ok(NewIntegrationKey { key, plaintext: format!("oak_{prefix}_{secret}") })
    }

    pub async fn list(&self, org_id: &str) -> Result<Vec<IntegrationKey>, TenancyError> {
        let mut tx = begin_org(&self.pool, org_id).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM tenancy.integration_keys WHERE org_id = $1 ORDER BY created_at DESC"
        ))
        .bind(org_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.iter().map(IntegrationKey::from_row).collect::<Result<_, _>>()?)
    }

    /// Revokes a key of `org_id`. Returns false when the org has no such key.
    pub async fn revoke(&self, org_id: &str, key_id: &str) -> Result<bool, TenancyError> {
        let mut tx = begin_org(&self.pool, org_id).await?;
        let updated = sqlx::query(
            "UPDATE tenancy.integration_keys SET revoked_at = COALESCE(revoked_at, now())
             WHERE id = $1 AND org_id = $2",
        )
        .bind(key_id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(updated == 1)
    }

    /// Resolves a presented key. Malformed, unknown, wrong and revoked keys all give `None`.
    /// `last_used_at` is refreshed at most once a minute, so a busy key does not write per request.
    pub async fn resolve(&self, presented: &str) -> Result<Option<ResolvedKey>, TenancyError> {
        let Some((prefix, secret)) = parse_presented(presented) else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.key_prefix', $1, true)").bind(prefix).execute(&mut *tx).await?;
        let row = sqlx::query(
            "SELECT id, org_id, secret_hash, scopes, revoked_at IS NOT NULL AS revoked
             FROM tenancy.integration_keys WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            let product = self.resolve_product(&mut tx, prefix, secret).await?;
            tx.commit().await?;
            return Ok(product);
        };
        if !usable(&row, secret)? {
            return Ok(None);
        }
        let key_id: String = row.try_get("id")?;
        let org_id: String = row.try_get("org_id")?;
        let scope_names: Vec<String> = row.try_get("scopes")?;
        sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(&org_id).execute(&mut *tx).await?;
        let tier: String = sqlx::query_scalar("SELECT tier FROM tenancy.orgs WHERE id = $1")
            .bind(&org_id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE tenancy.integration_keys SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
        )
        .bind(&key_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let scopes = scope_names.iter().filter_map(|s| Scope::parse(s)).collect();
        Ok(Some(ResolvedKey { key_id, org_id, tier, scopes, product: None }))
    }

    /// A product key under `prefix`, when the secret matches and it is not revoked.
    async fn resolve_product(
        &self,
        tx: &mut sqlx::PgConnection,
        prefix: &str,
        secret: &str,
    ) -> Result<Option<ResolvedKey>, TenancyError> {
        let row = sqlx::query(
            "SELECT id, product, secret_hash, revoked_at IS NOT NULL AS revoked
             FROM tenancy.product_keys WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if !usable(&row, secret)? {
            return Ok(None);
        }
        let key_id: String = row.try_get("id")?;
        sqlx::query(
            "UPDATE tenancy.product_keys SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
        )
        .bind(&key_id)
        .execute(&mut *tx)
        .await?;
        Ok(Some(ResolvedKey {
            key_id,
            org_id: PRODUCT_ORG.to_owned(),
            tier: "enterprise".to_owned(),
            scopes: vec![Scope::CatalogWrite],
            product: Some(row.try_get("product")?),
        }))
    }

    /// Creates a product's key (the operator's; needs a pool that may write product keys).
    pub async fn create_product_key(
        &self,
        product: &str,
        name: &str,
        created_by: &str,
    ) -> Result<(ProductKey, String), TenancyError> {
        let valid_product = !product.is_empty()
            && product.len() <= 40
            && product.starts_with(|c: char| c.is_ascii_lowercase())
            && product.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_product {
            return Err(TenancyError::Invalid("a product is a lowercase name such as psa or rmm".into()));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(TenancyError::Invalid("key name must have 1 to 200 characters".into()));
        }
        let prefix = random_string(KEY_PREFIX_LEN, true);
        let secret = random_string(KEY_SECRET_LEN, false);
        let row = sqlx::query(
            "INSERT INTO tenancy.product_keys (id, product, name, prefix, secret_hash, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, product, name, prefix, created_by, created_at, last_used_at, revoked_at",
        )
        .bind(ids::new_id("pkey"))
        .bind(product)
        .bind(name)
        .bind(&prefix)
        .bind(hash_secret(&secret).to_vec())
        .bind(created_by)
        .fetch_one(&self.pool)
        .await?;
        Ok((ProductKey::from_row(&row)?, format!("oak_{prefix}_{secret}")))
    }

    pub async fn list_product_keys(&self, product: &str) -> Result<Vec<ProductKey>, TenancyError> {
        let rows = sqlx::query(
            "SELECT id, product, name, prefix, created_by, created_at, last_used_at, revoked_at
             FROM tenancy.product_keys WHERE product = $1 ORDER BY created_at DESC",
        )
        .bind(product)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(ProductKey::from_row).collect::<Result<_, _>>()?)
    }

    /// Revokes a key of `product`. Returns false when the product has no such key.
    pub async fn revoke_product_key(&self, product: &str, key_id: &str) -> Result<bool, TenancyError> {
        let updated = sqlx::query(
            "UPDATE tenancy.product_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND product = $2",
        )
        .bind(key_id)
        .bind(product)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }
}

/// Whether a looked-up key row holds `secret` (compared in constant time) and is not revoked.
fn usable(row: &sqlx::postgres::PgRow, secret: &str) -> Result<bool, sqlx::Error> {
    let stored_hash: Vec<u8> = row.try_get("secret_hash")?;
    let matches: bool = hash_secret(secret).ct_eq(stored_hash.as_slice()).into();
    let revoked: bool = row.try_get("revoked")?;
    Ok(matches && !revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_keys_must_have_the_exact_shape() {
        let prefix = "abcdefgh1234";
        let secret = "A".repeat(KEY_SECRET_LEN);
        assert!(parse_presented(&format!("oak_{prefix}_{secret}")).is_some());
        assert!(parse_presented(&format!("oak_{prefix}_{secret}x")).is_none());
        assert!(parse_presented(&format!("oak_ABCDEFGH1234_{secret}")).is_none());
        assert!(parse_presented("oak_").is_none());
        assert!(parse_presented("").is_none());
        assert!(parse_presented(&format!("oak_{prefix}_{}", "é".repeat(20))).is_none());
    }
}
