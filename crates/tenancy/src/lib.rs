//! Orgs, their subscription tier, and integration keys: schema `tenancy`.
//!
//! An integration key is `oak_<prefix>_<secret>`; it is printed once at creation and stored as its
//! prefix plus a SHA-256 of the secret (the secret is 240 bits of randomness, so a fast hash is
//! enough and lets every request be checked cheaply). This crate touches no other schema.

pub mod keys;
pub mod store;

use chrono::{DateTime, Utc};
use oa_domain::ids;
use oa_store::{StoreError, begin_org};
use serde::Serialize;
use sqlx::PgPool;

pub use keys::{IntegrationKey, KeyStore, NewIntegrationKey, PRODUCT_ORG, ProductKey, ResolvedKey};

pub use oa_domain::status::OrgTier;

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub monthly_credits_override: Option<i64>,
    /// The operator's override of the tier's dispatch weight.
    pub dispatch_weight: Option<i32>,
    /// The operator's override of the tier's cap on running executions.
    pub max_running: Option<i32>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("{0}")]
    Invalid(String),
    #[error("org {0} already exists")]
    OrgExists(String),
    #[error("org {0} not found")]
    OrgNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for TenancyError {
    fn from(error: sqlx::Error) -> Self {
        TenancyError::Store(StoreError::Database(error))
    }
}

#[derive(Clone)]
pub struct OrgStore {
    pool: PgPool,
}

impl OrgStore {
    pub fn new(pool: PgPool) -> Self {
        OrgStore { pool }
    }

    /// Creates an org. Needs the admin pool: the app role cannot insert orgs.
    pub async fn create(&self, id: Option<&str>, name: &str, tier: &str) -> Result<Org, TenancyError> {
        let id = id.map(str::to_owned).unwrap_or_else(|| ids::new_id("org").to_lowercase());
        if !ids::has_prefix(&id, "org") {
            return Err(TenancyError::Invalid(format!(
                "org id {id:?} must look like org_<letters, digits, _ or ->"
            )));
        }
        if tier.parse::<OrgTier>().is_err() {
            use strum::VariantNames;
            return Err(TenancyError::Invalid(format!(
                "tier must be one of {}",
                OrgTier::VARIANTS.join(", ")
            )));
        }
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(TenancyError::Invalid("org name must have 1 to 200 characters".into()));
        }
        let mut conn = self.pool.acquire().await?;
        store::insert_org(&mut conn, &id, name, tier).await?.ok_or(TenancyError::OrgExists(id))
    }

    /// Reads an org inside its own org scope.
    pub async fn get(&self, org_id: &str) -> Result<Option<Org>, TenancyError> {
        let mut tx = begin_org(&self.pool, org_id).await?;
        let org = store::org(&mut tx, org_id).await?;
        tx.commit().await?;
        Ok(org)
    }

    /// Sets or clears the per-org monthly credit override. Admin pool.
    pub async fn set_credit_override(&self, org_id: &str, credits: Option<i64>) -> Result<Org, TenancyError> {
        if credits.is_some_and(|c| c < 0) {
            return Err(TenancyError::Invalid("a credit allocation cannot be negative".into()));
        }
        let mut conn = self.pool.acquire().await?;
        let org = store::set_credit_override(&mut conn, org_id, credits).await?;
        org.ok_or_else(|| TenancyError::OrgNotFound(org_id.to_owned()))
    }

    /// Overrides (or, with `None`, clears) an org's share of the workers and its cap on running
    /// executions; workers pick the change up within a few seconds.
    pub async fn set_dispatch_override(
        &self,
        org_id: &str,
        weight: Option<u32>,
        max_running: Option<u32>,
    ) -> Result<Org, TenancyError> {
        if weight.is_some_and(|w| !(1..=1_000).contains(&w)) {
            return Err(TenancyError::Invalid("a dispatch weight is from 1 to 1000".into()));
        }
        if max_running.is_some_and(|m| !(1..=100_000).contains(&m)) {
            return Err(TenancyError::Invalid("max running is from 1 to 100000".into()));
        }
        let mut conn = self.pool.acquire().await?;
        let org = store::set_dispatch_override(
            &mut conn,
            org_id,
            weight.map(|w| w as i32),
            max_running.map(|m| m as i32),
        )
        .await?;
        org.ok_or_else(|| TenancyError::OrgNotFound(org_id.to_owned()))
    }
}
