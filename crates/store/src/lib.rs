//! Postgres access shared by every service: pools, the embedded migrations, and
//! [`begin_org`], which opens a transaction bound to one org so row-level security scopes every
//! query in it.
//!
//! This crate owns no tables; each service owns its own schema and its own queries.

use std::time::Duration;

use oa_domain::ApiError;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use sqlx;

/// Every migration of the plane, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Url(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_),
            ) => {
                tracing::warn!(%error, "database unreachable");
                ApiError::unavailable("database")
            }
            _ => ApiError::internal_from("store", &error),
        }
    }
}

/// The conversions every service's error enum shares: a database error becomes its
/// `Store(StoreError)` variant (so `?` works on queries), and the enum reaches gRPC through its
/// `From<_> for ApiError`, written by the service, and `oa_proto::status`.
#[macro_export]
macro_rules! service_error {
    ($error:ty) => {
        impl From<sqlx::Error> for $error {
            fn from(error: sqlx::Error) -> Self {
                Self::Store($crate::StoreError::Database(error))
            }
        }

        impl From<$error> for tonic::Status {
            fn from(error: $error) -> tonic::Status {
                oa_proto::status::to_status(&oa_domain::ApiError::from(error))
            }
        }
    };
}

/// A database failure as the API's error: unavailable when the database is, internal otherwise.
pub fn api_error(error: sqlx::Error) -> ApiError {
    ApiError::from(StoreError::Database(error))
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    url.parse::<PgConnectOptions>()
        .map_err(|e| StoreError::Url(e.to_string()))
        .map(|o| o.application_name("one-agents"))
}

/// The app-role pool. It connects lazily so a process starts (and answers `/readyz` with the
/// truth) while the database is still down.
pub fn app_pool(config: &oa_config::DatabaseConfig) -> Result<PgPool, StoreError> {
    let options = connect_options(config.url.expose_secret())?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// A pool on the admin URL, for migrations and tenancy administration.
pub async fn admin_pool(url: &str) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

pub async fn migrate(admin: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(admin).await?;
    Ok(())
}

/// The newest migration this build carries: the schema version its code expects.
pub fn expected_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The newest migration applied to the database, or 0 before the first; readable by the app role,
/// so a role can wait for its schema without the admin credential.
pub async fn applied_schema_version(pool: &PgPool) -> Result<i64, StoreError> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text").fetch_one(pool).await?;
    if table.is_none() {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM public._sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(version.unwrap_or(0))
}

fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Opens a transaction in which row-level security sees only `org_id`'s rows.
/// Every org-scoped query runs inside one of these.
pub async fn begin_org<'p>(pool: &'p PgPool, org_id: &str) -> Result<Transaction<'p, Postgres>, StoreError> {
    if is_plain_id(org_id) {
        // One round trip instead of two: BEGIN and the org setting in one simple query. Only ids
        // made of letters, digits, `_` and `-` are written into it, so nothing needs quoting.
        let statement = format!("BEGIN; SELECT set_config('app.org_id', '{org_id}', true)");
        return Ok(pool.begin_with(sqlx::AssertSqlSafe(statement)).await?);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(org_id).execute(&mut *tx).await?;
    Ok(tx)
}

/// Moves an open transaction to `org_id`'s scope: a batch writes several orgs' rows in one
/// transaction, each under row-level security for its own org.
pub async fn switch_org(tx: &mut sqlx::PgConnection, org_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(org_id).execute(&mut *tx).await?;
    Ok(())
}

/// Whether the database answers a trivial query within the pool's acquire timeout.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// True when `error` is a unique-key violation (an idempotent insert that lost a race).
/// A text column read as one of the domain's enums (see `oa_domain::status`); a value the enum
/// does not know is a decode error.
pub fn text_column<T: TryFrom<String, Error = E>, E: std::error::Error + Send + Sync + 'static>(
    text: String,
) -> Result<T, sqlx::Error> {
    T::try_from(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// True when `error` was raised by a row-level security policy.
pub fn is_rls_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

/// What a failed database call means for the message that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The server cannot be reached or is overloaded: the same call will work later. A consumer
    /// holds its message and retries; an outage must not use up a message's deliveries.
    Outage,
    /// The data itself cannot be stored (bad encoding, a NUL, too large, a broken constraint):
    /// trying again changes nothing, so the message is given up at once, with this reason.
    BadData,
    /// Anything else (a schema or permission problem after a bad deploy, a bug): retried on a
    /// later delivery, up to the consumer's maximum.
    Other,
}

/// Sorts a database error by what a retry can do about it (SQLSTATE classes 08, 40, 53 and 57
/// are outages; 22, 23 and 54 are bad data).
pub fn fault(error: &sqlx::Error) -> Fault {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Fault::Outage,
        sqlx::Error::Database(db) => match db.code().as_deref().map(|code| code.get(..2).unwrap_or(code)) {
            Some("08" | "40" | "53" | "57") => Fault::Outage,
            Some("22" | "23" | "54") => Fault::BadData,
            _ => Fault::Other,
        },
        _ => Fault::Other,
    }
}
