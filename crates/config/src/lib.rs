//! Configuration of the plane, layered as defaults → TOML file → `ONE_AGENTS_*` environment (`__`
//! nests: `ONE_AGENTS_GATEWAY__LISTEN`) → [`Config::validate`].
//!
//! Secrets are [`secrecy::SecretString`] and never print. This crate reads no files other than the
//! config file and talks to no server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use secrecy;

/// The value the local stack uses for the internal service credential; production refuses it.
pub const DEV_SERVICE_TOKEN: &str = "dev-internal-service-token-not-for-production";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub environment: Environment,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub nats: NatsConfig,
    pub gateway: GatewayConfig,
    pub grpc: GrpcConfig,
    pub auth: AuthConfig,
    pub tiers: TiersConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// The app role's URL: a role that owns no tables, under row-level security.
    pub url: SecretString,
    /// A URL allowed to run migrations and tenancy administration (`migrate`, `orgs`, `keys`).
    pub admin_url: Option<SecretString>,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    pub url: SecretString,
    /// Prefixes every key, so tests and several planes can share one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    pub url: String,
    /// Prefixes every subject the plane uses, so tests and several planes share one server.
    pub subject_prefix: String,
    /// The JetStream stream of product events (`<prefix>bus.<org>.<product>.<event_type>`).
    pub bus_stream: String,
    /// The JetStream stream of execution work (`<prefix>work.executions`).
    pub work_stream: String,
    /// The durable consumer the workers share on each stream.
    pub consumer: String,
    /// Seconds a worker may hold a message without acking before it is redelivered; workers
    /// signal progress while they run, so only a dead worker's messages come back.
    pub ack_wait_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub rate_limit: RateLimitConfig,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Fixed window length.
    pub window_seconds: u64,
    pub per_org: u64,
    pub per_key: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    /// Where this process serves the gRPC services it runs.
    pub listen: SocketAddr,
    /// The internal credential every service call carries; services refuse calls without it.
    pub service_token: SecretString,
    /// Where each service is reached, by name (agents, executions, approvals, credits, catalog).
    pub endpoints: BTreeMap<String, String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    /// Name of the Hub session cookie that carries the JWT.
    pub session_cookie: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// How long fetched keys are trusted before a refetch.
    pub jwks_cache_seconds: u64,
    /// The least time between two refetches caused by unknown `kid`s.
    pub jwks_min_refresh_seconds: u64,
    /// Allowed clock skew for exp/nbf.
    pub leeway_seconds: u64,
    /// The private key `one-agents dev-token` signs with. Development only.
    pub dev_signing_key_file: Option<PathBuf>,
    pub dev_signing_kid: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TierConfig {
    pub monthly_credits: i64,
    pub max_active_agents: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TiersConfig {
    pub starter: TierConfig,
    pub pro: TierConfig,
    pub enterprise: TierConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// `json` for machines, `pretty` for people.
    pub log_format: String,
    pub log_filter: String,
    pub service_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            environment: Environment::Development,
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            nats: NatsConfig::default(),
            gateway: GatewayConfig::default(),
            grpc: GrpcConfig::default(),
            auth: AuthConfig::default(),
            tiers: TiersConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://one_agents_app@127.0.0.1:55432/one_agents".into(),
            admin_url: None,
            max_connections: 20,
            acquire_timeout_ms: 3_000,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig { url: "redis://127.0.0.1:56379".into(), key_prefix: "oa".into() }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:54222".into(),
            subject_prefix: String::new(),
            bus_stream: "BUS".into(),
            work_stream: "WORK".into(),
            consumer: "workers".into(),
            ack_wait_seconds: 30,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            rate_limit: RateLimitConfig::default(),
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig { enabled: true, window_seconds: 60, per_org: 6_000, per_key: 1_200 }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        let local = "http://127.0.0.1:50051".to_owned();
        let endpoints = ["agents", "executions", "approvals", "credits", "catalog"]
            .into_iter()
            .map(|name| (name.to_owned(), local.clone()))
            .collect();
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            service_token: DEV_SERVICE_TOKEN.into(),
            endpoints,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "https://hub.local.oneagents.dev".into(),
            audience: "one-agents".into(),
            session_cookie: "hub_session".into(),
            jwks_file: None,
            jwks_url: None,
            jwks_cache_seconds: 300,
            jwks_min_refresh_seconds: 10,
            leeway_seconds: 30,
            dev_signing_key_file: None,
            dev_signing_kid: "local-dev-1".into(),
        }
    }
}

impl Default for TierConfig {
    fn default() -> Self {
        TiersConfig::default().starter
    }
}

impl Default for TiersConfig {
    fn default() -> Self {
        TiersConfig {
            starter: TierConfig { monthly_credits: 10_000, max_active_agents: 5 },
            pro: TierConfig { monthly_credits: 100_000, max_active_agents: 25 },
            enterprise: TierConfig { monthly_credits: 1_000_000, max_active_agents: 200 },
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: "pretty".into(),
            log_filter: "info,sqlx=warn,async_nats=warn".into(),
            service_name: "one-agents".into(),
        }
    }
}

impl TiersConfig {
    pub fn get(&self, tier: &str) -> Option<&TierConfig> {
        match tier {
            "starter" => Some(&self.starter),
            "pro" => Some(&self.pro),
            "enterprise" => Some(&self.enterprise),
            _ => None,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Config::figment(file).extract::<Config>().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(Env::prefixed("ONE_AGENTS_").split("__"))
    }

    /// Checks what defaults and types cannot: dev conveniences are refused in production.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.gateway.body_limit_bytes == 0 {
            return invalid("gateway.body_limit_bytes must be positive");
        }
        if self.gateway.rate_limit.window_seconds == 0 {
            return invalid("gateway.rate_limit.window_seconds must be positive");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections must be positive");
        }
        if self.grpc.service_token.expose_secret().len() < 16 {
            return invalid("grpc.service_token must be at least 16 characters");
        }
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            return invalid("auth.issuer and auth.audience are required");
        }
        if self.auth.jwks_file.is_some() && self.auth.jwks_url.is_some() {
            return invalid("set one of auth.jwks_file and auth.jwks_url, not both");
        }
        for (name, tier) in [
            ("starter", &self.tiers.starter),
            ("pro", &self.tiers.pro),
            ("enterprise", &self.tiers.enterprise),
        ] {
            if tier.monthly_credits < 0 {
                return invalid(&format!("tiers.{name}.monthly_credits must not be negative"));
            }
        }
        if !matches!(self.telemetry.log_format.as_str(), "json" | "pretty") {
            return invalid("telemetry.log_format must be json or pretty");
        }
        if self.environment == Environment::Production {
            if self.auth.dev_signing_key_file.is_some() {
                return invalid(
                    "auth.dev_signing_key_file is a development key and is refused in production",
                );
            }
            if self.grpc.service_token.expose_secret() == DEV_SERVICE_TOKEN {
                return invalid("grpc.service_token must be set to a secret of your own in production");
            }
            if self.auth.jwks_file.is_none() && self.auth.jwks_url.is_none() {
                return invalid("auth.jwks_url (or auth.jwks_file) is required in production");
            }
        }
        Ok(())
    }

    /// The endpoint of a named service.
    pub fn endpoint(&self, service: &str) -> Result<&str, ConfigError> {
        self.grpc
            .endpoints
            .get(service)
            .map(String::as_str)
            .ok_or_else(|| ConfigError::Invalid(format!("grpc.endpoints.{service} is not set")))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error.
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "plane.toml",
                "[gateway]\nbody_limit_bytes = 2048\n[gateway.rate_limit]\nper_org = 7\n",
            )?;
            jail.set_env("ONE_AGENTS_GATEWAY__RATE_LIMIT__PER_ORG", "9");
            let config = Config::load(Some(Path::new("plane.toml"))).unwrap();
            assert_eq!(config.gateway.body_limit_bytes, 2048);
            assert_eq!(config.gateway.rate_limit.per_org, 9);
            assert_eq!(config.gateway.rate_limit.per_key, 1_200);
            Ok(())
        });
    }

    #[test]
    fn production_refuses_the_dev_signing_key_and_dev_service_token() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ONE_AGENTS_ENVIRONMENT", "production");
            jail.set_env("ONE_AGENTS_AUTH__JWKS_URL", "https://hub.example/jwks.json");
            jail.set_env("ONE_AGENTS_AUTH__DEV_SIGNING_KEY_FILE", "/tmp/dev.pem");
            jail.set_env("ONE_AGENTS_GRPC__SERVICE_TOKEN", "a-real-secret-of-32-characters-xx");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("dev_signing_key_file"), "{error}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("ONE_AGENTS_ENVIRONMENT", "production");
            jail.set_env("ONE_AGENTS_AUTH__JWKS_URL", "https://hub.example/jwks.json");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("service_token"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::default();
        let printed = format!("{config:?}");
        assert!(!printed.contains(DEV_SERVICE_TOKEN));
    }
}
