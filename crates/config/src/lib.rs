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
pub const DEV_LINK_SECRET: &str = "dev-approval-link-secret-not-for-production";

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

impl Environment {
    /// `development` or `production`.
    pub fn name(&self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Production => "production",
        }
    }
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
    pub llm: LlmConfig,
    pub credits: CreditsConfig,
    pub approvals: ApprovalsConfig,
    pub channels: ChannelsConfig,
    pub actions: ActionsConfig,
    pub egress: EgressConfig,
    pub limits: LimitsConfig,
    pub sandbox: SandboxConfig,
    pub shutdown: ShutdownConfig,
    pub dispatch: DispatchConfig,
}

/// Which provider and model answers each model tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlmConfig {
    /// quick, standard, premium, expert → provider and model.
    pub tiers: BTreeMap<String, TierModel>,
    pub providers: BTreeMap<String, ProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TierModel {
    pub provider: String,
    pub model: String,
    /// The most tokens one answer may take (sent as `max_tokens` on every call).
    pub max_tokens: u32,
}

impl Default for TierModel {
    fn default() -> Self {
        TierModel { provider: String::new(), model: String::new(), max_tokens: 1024 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// `openai` (OpenAI, Azure OpenAI, vLLM, Ollama, LiteLLM: chat completions) or `anthropic`
    /// (Messages API).
    pub kind: String,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    /// Consecutive failures that open the circuit, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CreditsConfig {
    /// Credits charged per ai_reason step, by model tier.
    pub prices: BTreeMap<String, i64>,
    /// A reservation still open this long was left by a worker that died; the sweeper settles it.
    pub reservation_ttl_seconds: u64,
}

/// Approval gates: how often expiry is swept, and the signed links that let a recipient decide.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ApprovalsConfig {
    /// The key that signs decision links (HMAC-SHA256). Rotate it to void every link out there.
    pub link_secret: SecretString,
    /// The longest a link lives; it never outlives its gate.
    pub link_ttl_seconds: u64,
    /// Where recipients reach the gateway: links are `<public_url>/approvals/<id>/link?token=...`.
    pub public_url: String,
    /// How often the sweeper looks for expired gates and unpublished decisions.
    pub sweep_interval_ms: u64,
    /// A decision not yet seen on the bus after this long is published again.
    pub republish_after_seconds: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            link_secret: DEV_LINK_SECRET.into(),
            link_ttl_seconds: 24 * 3600,
            public_url: "http://127.0.0.1:8080".into(),
            sweep_interval_ms: 1000,
            republish_after_seconds: 5,
        }
    }
}

/// Where notifications go: an SMS HTTP API, an SMTP relay, and default chat webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ChannelsConfig {
    pub sms_url: String,
    pub sms_api_key: Option<SecretString>,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub email_from: String,
    pub timeout_ms: u64,
    /// How mail reaches the relay: `starttls` (upgrade on the submission port), `tls` (implicit
    /// TLS, port 465) or `none`. `none` is refused in production; unset, it is `starttls` in
    /// production and `none` in development (the sandbox speaks plain SMTP).
    pub smtp_tls: Option<SmtpTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl Config {
    /// The SMTP security in force.
    pub fn smtp_tls(&self) -> SmtpTls {
        self.channels.smtp_tls.unwrap_or(match self.environment {
            Environment::Production => SmtpTls::Starttls,
            Environment::Development => SmtpTls::None,
        })
    }
}

/// Product APIs that `action` steps call, by product (`rmm` for `rmm.isolate_device`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ActionsConfig {
    pub endpoints: BTreeMap<String, String>,
    pub timeout_ms: u64,
    /// The secret action calls are signed with (HMAC-SHA256), so a product knows which org calls.
    pub signing_secret: SecretString,
    /// A product's own secret, in place of `signing_secret`.
    pub signing_secrets: BTreeMap<String, SecretString>,
}

/// The development secret action calls are signed with; refused in production.
pub const DEV_ACTION_SECRET: &str = "dev-action-signing-secret-not-for-production";

impl ActionsConfig {
    /// The secret calls to `product` are signed with.
    pub fn secret_for(&self, product: &str) -> &SecretString {
        self.signing_secrets.get(product).unwrap_or(&self.signing_secret)
    }
}

/// Outbound calls: webhooks, chat channels, SMS and product APIs all leave through one client that
/// refuses loopback, link-local, private, multicast and unspecified addresses and the plane's own
/// listeners, checked on the resolved address at connect time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EgressConfig {
    /// What may be reached although private: CIDRs (`10.20.0.0/16`) and `host:port` pairs
    /// (`10.1.2.3:8443`, `psa.internal:443`). In development the sandbox's port is added.
    pub allow: Vec<String>,
}

/// What one step may grow to, whatever its definition or its event says. A step past a cap fails
/// once with an error naming the cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// The most one template may render (a message, a recipient, a field of a transform).
    pub max_rendered_bytes: usize,
    /// The most a rendered prompt (system prompt included) may hold.
    pub max_prompt_bytes: usize,
    /// The most a step's output may hold, as JSON.
    pub max_step_output_bytes: usize,
    /// The time one notification step has for all its recipients together.
    pub notification_budget_ms: u64,
    /// Memory one template render may use: renders run in helper processes capped by the kernel.
    pub template_memory_bytes: u64,
    /// Helper processes that render templates, per worker.
    pub template_renderers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_rendered_bytes: 256 * 1024,
            max_prompt_bytes: 64 * 1024,
            max_step_output_bytes: 1024 * 1024,
            notification_budget_ms: 60_000,
            template_memory_bytes: 256 * 1024 * 1024,
            template_renderers: 4,
        }
    }
}

/// One entry of `egress.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRule {
    Network(ipnet::IpNet),
    HostPort(String, u16),
}

impl EgressRule {
    pub fn parse(entry: &str) -> Option<EgressRule> {
        if let Ok(network) = entry.parse::<ipnet::IpNet>() {
            return Some(EgressRule::Network(network));
        }
        if let Ok(address) = entry.parse::<SocketAddr>() {
            return Some(EgressRule::HostPort(address.ip().to_string(), address.port()));
        }
        let (host, port) = entry.rsplit_once(':')?;
        let valid_host =
            !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        Some(EgressRule::HostPort(host.to_ascii_lowercase(), port.parse().ok()?)).filter(|_| valid_host)
    }
}

impl Config {
    /// The egress allow-list in force: the configured rules, plus the sandbox in development.
    pub fn egress_rules(&self) -> Vec<EgressRule> {
        let mut rules: Vec<EgressRule> =
            self.egress.allow.iter().filter_map(|e| EgressRule::parse(e)).collect();
        if self.environment == Environment::Development {
            let sandbox = self.sandbox.http_listen;
            rules.push(EgressRule::HostPort(sandbox.ip().to_string(), sandbox.port()));
        }
        rules
    }
}

/// How a process drains on SIGTERM. The gateway reports unready at once, keeps serving for
/// `unready_delay_ms` (time for load balancers to take it out), then stops accepting connections
/// and finishes the requests in flight. The worker stops pulling and lets running steps finish;
/// one second before the grace ends it hands what is left back to the bus for another replica.
/// The process exits within `grace_seconds`; Kubernetes' termination grace should be a few
/// seconds longer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    pub grace_seconds: u64,
    pub unready_delay_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_seconds: 25, unready_delay_ms: 0 }
    }
}

impl ShutdownConfig {
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_seconds)
    }

    pub fn unready_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.unready_delay_ms)
    }

    /// When the worker hands unfinished work back: a second before the grace ends (half-way for a
    /// grace under two seconds), so the hand-back itself fits in the grace.
    pub fn hand_back_after(&self) -> std::time::Duration {
        let grace = self.grace();
        if grace < std::time::Duration::from_secs(2) {
            grace / 2
        } else {
            grace - std::time::Duration::from_secs(1)
        }
    }
}

/// How workers take runnable executions from Postgres: per-org weighted round robin under leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DispatchConfig {
    /// How long a claim is a worker's without a heartbeat: a dead worker's executions are claimed
    /// again after this. Heartbeats renew it every third of it.
    pub lease_seconds: u64,
    /// How often a worker with free slots looks for work when nothing woke it.
    pub poll_ms: u64,
    /// How long executions sharing a concurrency key wait after they are queued before the first
    /// is taken: events ingested side by side land in their bus order first.
    pub key_settle_ms: u64,
    /// How many of an org's queued executions one claim looks at: keys blocked deeper than this
    /// wait for the head to move, and never slow another org's claim.
    pub claim_window: u32,
    /// Executions one worker runs at once (most of a run is waiting on a model, a product or
    /// the database). `nats.work_concurrency = 0` turns running off (an ingest-only worker).
    pub runs_per_worker: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            lease_seconds: 30,
            poll_ms: 200,
            key_settle_ms: 100,
            claim_window: 1_000,
            runs_per_worker: 32,
        }
    }
}

impl DispatchConfig {
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds.max(1))
    }
}

/// The local sandbox that stands in for outside services. Development and tests only.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    pub http_listen: SocketAddr,
    pub smtp_listen: SocketAddr,
}

pub const SANDBOX_HTTP: &str = "127.0.0.1:59100";
pub const SANDBOX_SMTP_PORT: u16 = 59125;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            http_listen: SANDBOX_HTTP.parse().expect("a socket address"),
            smtp_listen: SocketAddr::from(([127, 0, 0, 1], SANDBOX_SMTP_PORT)),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        let sandbox = format!("http://{SANDBOX_HTTP}");
        let providers =
            [("sandbox".to_owned(), ProviderConfig { base_url: sandbox, ..ProviderConfig::default() })]
                .into();
        let tiers = ["quick", "standard", "premium", "expert"]
            .into_iter()
            .map(|tier| {
                (
                    tier.to_owned(),
                    TierModel {
                        provider: "sandbox".into(),
                        model: format!("sandbox-{tier}"),
                        ..TierModel::default()
                    },
                )
            })
            .collect();
        LlmConfig { tiers, providers }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: "openai".into(),
            base_url: String::new(),
            api_key: None,
            timeout_ms: 30_000,
            max_retries: 3,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
        }
    }
}

impl Default for CreditsConfig {
    fn default() -> Self {
        CreditsConfig {
            prices: [("quick", 1), ("standard", 5), ("premium", 20), ("expert", 50)]
                .into_iter()
                .map(|(tier, price)| (tier.to_owned(), price))
                .collect(),
            reservation_ttl_seconds: 900,
        }
    }
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        let sandbox = format!("http://{SANDBOX_HTTP}");
        ChannelsConfig {
            sms_url: format!("{sandbox}/sms/messages"),
            sms_api_key: None,
            smtp_host: "127.0.0.1".into(),
            smtp_port: SANDBOX_SMTP_PORT,
            email_from: "agents@one-agents.local".into(),
            timeout_ms: 10_000,
            smtp_tls: None,
        }
    }
}

impl Default for ActionsConfig {
    fn default() -> Self {
        let sandbox = format!("http://{SANDBOX_HTTP}/products");
        let endpoints = ["psa", "rmm", "defend", "backup", "billing", "hub"]
            .into_iter()
            .map(|product| (product.to_owned(), format!("{sandbox}/{product}")))
            .collect();
        ActionsConfig {
            endpoints,
            timeout_ms: 10_000,
            signing_secret: DEV_ACTION_SECRET.into(),
            signing_secrets: BTreeMap::new(),
        }
    }
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
    /// Bus events one worker handles at once.
    pub event_concurrency: usize,
    /// Bus events one worker pulls ahead of ingest and queues per org, so that one org's flood
    /// does not hold back the others' events (see the worker's intake).
    pub intake_events: usize,
    /// The most bytes of bus events one worker pulls ahead.
    pub intake_bytes: usize,
    /// Executions one worker runs at once; 0 runs no executions (an ingest-only worker).
    pub work_concurrency: usize,
    /// Deliveries of one message before it is given up: an event goes to the dead letters and a
    /// work item fails its executions, both with reason `max_deliveries`. Outages (a server down)
    /// do not use deliveries up: the worker holds the message and retries in place.
    pub max_deliveries: u64,
    /// How long a failed message waits before its next delivery.
    pub redelivery_delay_ms: u64,
    /// Credentials, when the server asks for them: `user` with `password`, or a `token`.
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Origins of the Hub pages that may send cookie-authenticated writes (CSRF defence):
    /// `https://hub.example.com`. A write with a session cookie from anywhere else is 403.
    pub hub_origins: Vec<String>,
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
    /// Failed authentications one client address may make per window; past it, 429.
    pub auth_failures_per_client: u64,
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
    /// gRPC over TLS between roles: this process serves with `cert_file`/`key_file` and trusts
    /// `ca_file` for the `https://` endpoints it calls. The service token is checked either way.
    pub tls: Option<GrpcTlsConfig>,
}

/// PEM files of a role's gRPC certificate, its key and the CA that signed the roles' certificates.
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
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
    /// Agent definitions an org may hold, drafts and paused ones included (429 `quota_exceeded`).
    pub max_agents: u32,
    /// Recipients one notification (or one approval's `notify`) may list.
    pub max_recipients: u32,
    /// The shortest interval between two ticks of a schedule trigger.
    pub min_schedule_interval_seconds: u64,
    /// The org's share of the workers against other orgs with work waiting (weighted round
    /// robin); the operator CLI overrides it per org (`orgs dispatch`).
    pub dispatch_weight: u32,
    /// Executions of the org that may run at once across all workers; the CLI overrides it too.
    pub max_running: u32,
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
    /// `json` for machines, `pretty` for people, `auto` (the default): JSON unless stdout is a
    /// terminal. Pretty logs carry colour only on a terminal.
    pub log_format: String,
    /// Which log lines are written, and also which spans exist for tracing: the plane's spans are
    /// `info`, so a filter quieter than `info` exports no traces. `RUST_LOG` overrides it. Target
    /// and level directives are decided once per callsite; span or field directives
    /// (`[span{field=value}]`) are honoured too, at the cost of a lock on every span enter and exit.
    pub log_filter: String,
    /// The `service.name` of exported spans: `<service_name>-<role>` for a process of one role,
    /// `<service_name>` for one that runs several.
    pub service_name: String,
    /// The admin port: Prometheus text on `/metrics`. `None` serves no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Org ids that get per-org series (`oneagents_org_*`): an operator's largest tenants. No other
    /// org's id ever appears in a label.
    pub org_allowlist: Vec<String>,
    /// `deployment.environment` on exported spans; the environment's name when empty.
    pub deployment_environment: String,
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
            llm: LlmConfig::default(),
            credits: CreditsConfig::default(),
            approvals: ApprovalsConfig::default(),
            channels: ChannelsConfig::default(),
            actions: ActionsConfig::default(),
            egress: EgressConfig::default(),
            limits: LimitsConfig::default(),
            sandbox: SandboxConfig::default(),
            shutdown: ShutdownConfig::default(),
            dispatch: DispatchConfig::default(),
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
            event_concurrency: 64,
            intake_events: 20_000,
            intake_bytes: 64 << 20,
            work_concurrency: 32,
            max_deliveries: 5,
            redelivery_delay_ms: 1_000,
            user: None,
            password: None,
            token: None,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            hub_origins: Vec::new(),
            body_limit_bytes: 1024 * 1024,
            rate_limit: RateLimitConfig::default(),
            request_timeout_ms: 30_000,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            window_seconds: 60,
            per_org: 6_000,
            per_key: 1_200,
            auth_failures_per_client: 30,
        }
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
            tls: None,
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
            starter: TierConfig {
                monthly_credits: 10_000,
                max_active_agents: 5,
                max_agents: 50,
                max_recipients: 10,
                min_schedule_interval_seconds: 300,
                dispatch_weight: 1,
                max_running: 16,
            },
            pro: TierConfig {
                monthly_credits: 100_000,
                max_active_agents: 25,
                max_agents: 250,
                max_recipients: 25,
                min_schedule_interval_seconds: 60,
                dispatch_weight: 2,
                max_running: 64,
            },
            enterprise: TierConfig {
                monthly_credits: 1_000_000,
                max_active_agents: 200,
                max_agents: 2_000,
                max_recipients: 100,
                min_schedule_interval_seconds: 60,
                dispatch_weight: 4,
                max_running: 256,
            },
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: "auto".into(),
            log_filter: "info,sqlx=warn,async_nats=warn".into(),
            service_name: "one-agents".into(),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            org_allowlist: Vec::new(),
            deployment_environment: String::new(),
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
        if let Some(bad) = self.egress.allow.iter().find(|e| EgressRule::parse(e).is_none()) {
            return invalid(&format!("egress.allow entry {bad:?} is neither a CIDR nor host:port"));
        }
        if self.shutdown.grace_seconds == 0 {
            return invalid("shutdown.grace_seconds must be at least 1");
        }
        if self.shutdown.unready_delay_ms >= self.shutdown.grace_seconds * 1000 {
            return invalid("shutdown.unready_delay_ms must be shorter than shutdown.grace_seconds");
        }
        if let Some(tls) = &self.grpc.tls {
            for (what, path) in
                [("cert_file", &tls.cert_file), ("key_file", &tls.key_file), ("ca_file", &tls.ca_file)]
            {
                if !path.is_file() {
                    return invalid(&format!("grpc.tls.{what} {} is not a file", path.display()));
                }
            }
        }
        for (service, endpoint) in &self.grpc.endpoints {
            if self.grpc.tls.is_some() && !endpoint.starts_with("https://") {
                return invalid(&format!(
                    "grpc.tls is set, so grpc.endpoints.{service} must be an https:// address, not {endpoint}"
                ));
            }
            if self.grpc.tls.is_none() && endpoint.starts_with("https://") {
                return invalid(&format!(
                    "grpc.endpoints.{service} is https://: set grpc.tls (cert_file, key_file, ca_file)"
                ));
            }
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return invalid("nats.user and nats.password go together");
        }
        if self.nats.password.is_some() && self.nats.token.is_some() {
            return invalid("set nats.user and nats.password, or nats.token, not both");
        }
        if self.nats.max_deliveries == 0 {
            return invalid("nats.max_deliveries must be at least 1");
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
        if !matches!(self.telemetry.log_format.as_str(), "json" | "pretty" | "auto") {
            return invalid("telemetry.log_format must be json, pretty or auto");
        }
        for (tier, model) in &self.llm.tiers {
            if !self.llm.providers.contains_key(&model.provider) {
                return invalid(&format!(
                    "llm.tiers.{tier} names provider {:?}, which llm.providers lacks",
                    model.provider
                ));
            }
        }
        for (name, provider) in &self.llm.providers {
            if !matches!(provider.kind.as_str(), "openai" | "anthropic") {
                return invalid(&format!("llm.providers.{name}.kind is openai or anthropic"));
            }
        }
        if self.credits.prices.values().any(|price| *price < 0) {
            return invalid("credits.prices must not be negative");
        }
        if self.approvals.link_secret.expose_secret().len() < 16 {
            return invalid("approvals.link_secret must be at least 16 characters");
        }
        if self.approvals.sweep_interval_ms == 0 || self.approvals.link_ttl_seconds == 0 {
            return invalid("approvals.sweep_interval_ms and approvals.link_ttl_seconds must be positive");
        }
        if !self.approvals.public_url.starts_with("http://")
            && !self.approvals.public_url.starts_with("https://")
        {
            return invalid("approvals.public_url must be an http(s) URL");
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
            if self.approvals.link_secret.expose_secret() == DEV_LINK_SECRET {
                return invalid("approvals.link_secret must be set to a secret of your own in production");
            }
            let dev_secret = std::iter::once(&self.actions.signing_secret)
                .chain(self.actions.signing_secrets.values())
                .any(|secret| secret.expose_secret() == DEV_ACTION_SECRET);
            if dev_secret {
                return invalid(
                    "actions.signing_secret (and every actions.signing_secrets entry) must be a secret of your own in production",
                );
            }
            if self.smtp_tls() == SmtpTls::None {
                return invalid(
                    "channels.smtp_tls = \"none\" sends mail in clear text; production needs starttls or tls",
                );
            }
            let sandbox_port = self.sandbox.http_listen.port().to_string();
            let urls = self
                .llm
                .providers
                .values()
                .map(|p| p.base_url.as_str())
                .chain([self.channels.sms_url.as_str()])
                .chain(self.actions.endpoints.values().map(String::as_str));
            for url in urls {
                if url.contains(&format!(":{sandbox_port}")) {
                    return invalid(&format!(
                        "{url} points at the local sandbox, which production never uses"
                    ));
                }
            }
            // The defaults point at the local stack: a pod whose secret is missing says so at once.
            if self.database.url.expose_secret() == DatabaseConfig::default().url.expose_secret() {
                return invalid("database.url (ONE_AGENTS_DATABASE__URL) is required in production");
            }
            if self.redis.url.expose_secret() == RedisConfig::default().url.expose_secret() {
                return invalid("redis.url (ONE_AGENTS_REDIS__URL) is required in production");
            }
            if self.nats.url == NatsConfig::default().url {
                return invalid("nats.url (ONE_AGENTS_NATS__URL) is required in production");
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
        figment::Jail::expect_with(|jail| {
            jail.set_env("ONE_AGENTS_ENVIRONMENT", "production");
            jail.set_env("ONE_AGENTS_AUTH__JWKS_URL", "https://hub.example/jwks.json");
            jail.set_env("ONE_AGENTS_GRPC__SERVICE_TOKEN", "a-real-secret-of-32-characters-xx");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("approvals.link_secret"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn production_sends_mail_over_tls_and_refuses_clear_text() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ONE_AGENTS_ENVIRONMENT", "production");
            jail.set_env("ONE_AGENTS_CHANNELS__SMTP_TLS", "none");
            jail.set_env("ONE_AGENTS_AUTH__JWKS_URL", "https://hub.example/jwks.json");
            jail.set_env("ONE_AGENTS_GRPC__SERVICE_TOKEN", "a-real-secret-of-32-characters-xx");
            jail.set_env("ONE_AGENTS_APPROVALS__LINK_SECRET", "another-real-secret-of-32-chars-x");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("actions.signing_secret"), "{error}");
            jail.set_env("ONE_AGENTS_ACTIONS__SIGNING_SECRET", "a-third-real-secret-of-32-chars-xx");
            let error = Config::load(None).unwrap_err().to_string();
            assert!(error.contains("smtp_tls"), "{error}");
            // Then each address the local stack's defaults would fill, named with its variable.
            jail.set_env("ONE_AGENTS_CHANNELS__SMTP_TLS", "tls");
            jail.set_env("ONE_AGENTS_LLM__PROVIDERS__SANDBOX__BASE_URL", "https://llm.example");
            jail.set_env("ONE_AGENTS_CHANNELS__SMS_URL", "https://sms.example/messages");
            for product in ["PSA", "RMM", "DEFEND", "BACKUP", "BILLING", "HUB"] {
                jail.set_env(format!("ONE_AGENTS_ACTIONS__ENDPOINTS__{product}"), "https://products.example");
            }
            for (variable, value) in [
                ("ONE_AGENTS_DATABASE__URL", "postgres://app@db.internal/one_agents"),
                ("ONE_AGENTS_REDIS__URL", "redis://redis.internal"),
                ("ONE_AGENTS_NATS__URL", "nats://nats.internal:4222"),
            ] {
                let error = Config::load(None).unwrap_err().to_string();
                assert!(error.contains(variable), "{error}");
                jail.set_env(variable, value);
            }
            Config::load(None).expect("a complete production config loads");
            Ok(())
        });
        let mut config = Config::default();
        assert_eq!(config.smtp_tls(), SmtpTls::None, "the sandbox speaks plain SMTP");
        config.environment = Environment::Production;
        assert_eq!(config.smtp_tls(), SmtpTls::Starttls);
        config.channels.smtp_tls = Some(SmtpTls::Tls);
        assert_eq!(config.smtp_tls(), SmtpTls::Tls);
    }

    #[test]
    fn egress_entries_are_networks_or_host_ports() {
        assert!(matches!(EgressRule::parse("10.20.0.0/16"), Some(EgressRule::Network(_))));
        assert_eq!(
            EgressRule::parse("127.0.0.1:59100"),
            Some(EgressRule::HostPort("127.0.0.1".into(), 59100))
        );
        assert_eq!(
            EgressRule::parse("PSA.internal:443"),
            Some(EgressRule::HostPort("psa.internal".into(), 443))
        );
        for bad in ["", "psa.internal", "psa internal:443", "10.0.0.0/99", "host:port"] {
            assert_eq!(EgressRule::parse(bad), None, "{bad}");
        }
        let mut config = Config::default();
        config.egress.allow = vec!["not a rule".into()];
        assert!(config.validate().unwrap_err().to_string().contains("egress.allow"));
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::default();
        let printed = format!("{config:?}");
        assert!(!printed.contains(DEV_SERVICE_TOKEN));
    }
}
