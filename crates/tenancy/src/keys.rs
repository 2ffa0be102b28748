//! Integration keys: creation (printed once), listing, revocation and resolution of a presented key.

use chrono::{DateTime, Utc};
use oa_domain::{Scope, ids};
use oa_store::begin_org;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::{TenancyError, store};

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
        let new = store::NewKey {
            id: &ids::new_id("key"),
            org_id,
            name,
            prefix: &prefix,
            secret_hash: &hash_secret(&secret),
            scopes: &scope_names,
            created_by,
        };
        let Some(key) = store::insert_key(&mut tx, &new).await? else {
            return Err(TenancyError::OrgNotFound(org_id.to_owned()));
        };
        tx.commit().await?;
        Ok(NewIntegrationKey { key, plaintext: format!("oak_{prefix}_{secret}") })
    }

    pub async fn list(&self, org_id: &str) -> Result<Vec<IntegrationKey>, TenancyError> {
        let mut tx = begin_org(&self.pool, org_id).await?;
        let keys = store::keys_of_org(&mut tx, org_id).await?;
        tx.commit().await?;
        Ok(keys)
    }

    /// Revokes a key of `org_id`. Returns false when the org has no such key.
    pub async fn revoke(&self, org_id: &str, key_id: &str) -> Result<bool, TenancyError> {
        let mut tx = begin_org(&self.pool, org_id).await?;
        let revoked = store::revoke_key(&mut tx, org_id, key_id).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Resolves a presented key. Malformed, unknown, wrong and revoked keys all give `None`.
    /// `last_used_at` is refreshed at most once a minute, so a busy key does not write per request.
    pub async fn resolve(&self, presented: &str) -> Result<Option<ResolvedKey>, TenancyError> {
        let Some((prefix, secret)) = parse_presented(presented) else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await?;
        let Some(key) = store::key_by_prefix(&mut tx, prefix).await? else {
            let product = self.resolve_product(&mut tx, prefix, secret).await?;
            tx.commit().await?;
            return Ok(product);
        };
        if !usable(&key, secret) {
            return Ok(None);
        }
        store::scope_to_org(&mut tx, &key.owner).await?;
        let tier = store::org_tier(&mut tx, &key.owner).await?;
        store::touch_key(&mut tx, &key.id).await?;
        tx.commit().await?;
        let scopes = key.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
        Ok(Some(ResolvedKey { key_id: key.id, org_id: key.owner, tier, scopes, product: None }))
    }

    /// A product key under `prefix`, when the secret matches and it is not revoked.
    async fn resolve_product(
        &self,
        tx: &mut sqlx::PgConnection,
        prefix: &str,
        secret: &str,
    ) -> Result<Option<ResolvedKey>, TenancyError> {
        let Some(key) = store::product_key_by_prefix(tx, prefix).await? else {
            return Ok(None);
        };
        if !usable(&key, secret) {
            return Ok(None);
        }
        store::touch_product_key(tx, &key.id).await?;
        Ok(Some(ResolvedKey {
            key_id: key.id,
            org_id: PRODUCT_ORG.to_owned(),
            tier: "enterprise".to_owned(),
            scopes: vec![Scope::CatalogWrite],
            product: Some(key.owner),
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
        let new = store::NewProductKey {
            id: &ids::new_id("pkey"),
            product,
            name,
            prefix: &prefix,
            secret_hash: &hash_secret(&secret),
            created_by,
        };
        let key = store::insert_product_key(&mut *self.pool.acquire().await?, &new).await?;
        Ok((key, format!("oak_{prefix}_{secret}")))
    }

    pub async fn list_product_keys(&self, product: &str) -> Result<Vec<ProductKey>, TenancyError> {
        Ok(store::product_keys(&mut *self.pool.acquire().await?, product).await?)
    }

    /// Revokes a key of `product`. Returns false when the product has no such key.
    pub async fn revoke_product_key(&self, product: &str, key_id: &str) -> Result<bool, TenancyError> {
        Ok(store::revoke_product_key(&mut *self.pool.acquire().await?, product, key_id).await?)
    }
}

/// Whether a looked-up key row holds `secret` (compared in constant time) and is not revoked.
fn usable(key: &store::KeyLookup, secret: &str) -> bool {
    let matches: bool = hash_secret(secret).ct_eq(key.secret_hash.as_slice()).into();
    matches && !key.revoked
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
