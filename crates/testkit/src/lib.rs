//! The test harness. Every test gets its own Postgres database (migrated, with the app role under
//! row-level security), its own Redis key prefix and, through [`TestPlane`], its own gateway on a
//! free port, all against the real servers that `deploy/local/start.sh` runs. Nothing here fakes
//! Postgres, Redis or NATS.
//!
//! Server addresses come from `ONE_AGENTS_TEST_*` variables (see `deploy/local/env.sh`), with the
//! local stack's ports as defaults.

pub mod otlp;
pub mod prometheus;
pub mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use oa_config::Config;
use oa_domain::Scope;
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

pub const HUB_TEST_KEY_PEM: &str = include_str!("../fixtures/hub-test-key.pem");
pub const ATTACKER_KEY_PEM: &str = include_str!("../fixtures/attacker-key.pem");
pub const HUB_TEST_KID: &str = "hub-test-1";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn admin_url() -> String {
    env_or("ONE_AGENTS_TEST_ADMIN_URL", "postgres://postgres@127.0.0.1:55432/postgres")
}

pub fn redis_url() -> String {
    env_or("ONE_AGENTS_TEST_REDIS_URL", "redis://127.0.0.1:56379")
}

pub fn nats_url() -> String {
    env_or("ONE_AGENTS_TEST_NATS_URL", "nats://127.0.0.1:54222")
}

/// The test Postgres server's address (for a [`proxy::Proxy`] in front of it).
pub fn postgres_addr() -> SocketAddr {
    let options: PgConnectOptions = admin_url().parse().expect("ONE_AGENTS_TEST_ADMIN_URL");
    let host = if options.get_host() == "localhost" { "127.0.0.1" } else { options.get_host() };
    SocketAddr::new(host.parse().expect("the test Postgres host is an IP address"), options.get_port())
}

/// Points the plane's database connections at `proxy` instead of the server itself.
pub fn connect_database_through(config: &mut Config, proxy: SocketAddr) {
    use secrecy::ExposeSecret;
    let server = postgres_addr();
    let url = config.database.url.expose_secret().replace(&format!("@{server}/"), &format!("@{proxy}/"));
    config.database.url = SecretString::from(url);
}

/// The peak resident memory of this process: the whole plane of a test runs in it, and nextest
/// runs each test in a process of its own.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// A short random name for per-test resources.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh, migrated database.
pub struct TestDb {
    pub name: String,
    /// Superuser pool on this database: bypasses row-level security, for setup and inspection.
    pub admin: PgPool,
    /// The plane's own role: owns no table, subject to row-level security.
    pub app: PgPool,
    pub app_url: String,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<TestDb> {
        let server: PgConnectOptions = admin_url().parse().context("ONE_AGENTS_TEST_ADMIN_URL")?;
        let name = unique("oat_");
        let root = oa_store::admin_pool(&admin_url())
            .await
            .context("connecting to the test Postgres (is `make stack` running?)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&root).await?;
        root.close().await;
        let admin_options = server.clone().database(&name);
        let admin =
            sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_with(admin_options).await?;
        oa_store::migrate(&admin).await?;
        let app_url = format!("postgres://one_agents_app@{}:{}/{name}", server.get_host(), server.get_port());
        let app_config = oa_config::DatabaseConfig {
            url: SecretString::from(app_url.clone()),
            admin_url: None,
            max_connections: 10,
            acquire_timeout_ms: 5_000,
        };
        let app = oa_store::app_pool(&app_config)?;
        Ok(TestDb { name, admin, app, app_url })
    }

    pub async fn create_org(&self, tier: &str) -> anyhow::Result<String> {
        self.create_org_with_id(&unique("org_"), tier).await
    }

    /// Creates an org with a chosen id (one a config names before the org exists).
    pub async fn create_org_with_id(&self, id: &str, tier: &str) -> anyhow::Result<String> {
        let org = oa_tenancy::OrgStore::new(self.admin.clone()).create(Some(id), "Test MSP", tier).await?;
        let allocation = Config::default().tiers.get(tier).map(|t| t.monthly_credits).unwrap_or(0);
        self.set_plan(&org.id, tier, None, allocation).await?;
        Ok(org.id)
    }

    /// Sets the org's plan as `one-agents orgs set-credits` does (an override of its allocation).
    pub async fn set_plan(
        &self,
        org_id: &str,
        tier: &str,
        monthly_override: Option<i64>,
        allocation: i64,
    ) -> anyhow::Result<()> {
        let mut tx = oa_store::begin_org(&self.admin, org_id).await?;
        oa_credits::store::set_plan(&mut tx, org_id, tier, monthly_override, allocation).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets an org's settings (contacts, its own webhooks) as `PUT /api/org/settings` does.
    pub async fn set_org_settings(&self, org_id: &str, settings: serde_json::Value) -> anyhow::Result<()> {
        oa_agents::update_org_settings(&self.admin, org_id, &settings, "test")
            .await
            .map_err(|e| anyhow::anyhow!("{}: {:?}", e.message, e.details))?;
        Ok(())
    }

    /// Creates a product's key (it writes that product's event types) and returns its plaintext.
    pub async fn create_product_key(&self, product: &str) -> anyhow::Result<String> {
        let store = oa_tenancy::KeyStore::new(self.admin.clone());
        Ok(store.create_product_key(product, "test product key", "test").await?.1)
    }

    /// Creates an integration key and returns `(key id, plaintext)`.
    pub async fn create_key(&self, org_id: &str, scopes: &[Scope]) -> anyhow::Result<(String, String)> {
        let created =
            oa_tenancy::KeyStore::new(self.admin.clone()).create(org_id, "test key", scopes, "test").await?;
        Ok((created.key.id, created.plaintext))
    }
}

/// A running plane (gateway and every service) on its own database and Redis prefix, trusting
/// the test Hub key.
pub struct TestPlane {
    pub db: TestDb,
    /// What the sandbox received: model calls, SMS, email, webhooks, product actions.
    pub sandbox: oa_sandbox::Recorder,
    pub config: Config,
    pub addr: SocketAddr,
    /// The admin port (`/metrics`), unless the config turned it off.
    pub metrics_addr: Option<SocketAddr>,
    pub http: reqwest::Client,
    roles: Vec<&'static str>,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<()>>,
    sandbox_shutdown: CancellationToken,
    _dir: TempDir,
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(unique("oa-test-"));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The plane's logs go to the test's output, which nextest shows when a test fails. `RUST_LOG`
/// picks what is logged (`warn` by default).
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

impl Drop for TestPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.sandbox_shutdown.cancel();
    }
}

/// A config for tests: every server from the test environment, a free port, its own Redis prefix.
pub fn test_config(db: &TestDb, jwks_file: Option<PathBuf>) -> Config {
    let mut config = Config::default();
    config.database.url = SecretString::from(db.app_url.clone());
    config.database.max_connections = 10;
    config.redis.url = SecretString::from(redis_url());
    config.redis.key_prefix = unique("oat:");
    config.nats.url = nats_url();
    config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.telemetry.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.auth.jwks_file = jwks_file;
    config.auth.jwks_min_refresh_seconds = 0;
    // Every plane has its own subjects, streams and consumers on the shared NATS server.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    config.nats.subject_prefix = format!("t{tag}.");
    config.nats.bus_stream = format!("BUS_{tag}");
    config.nats.work_stream = format!("WORK_{tag}");
    config.nats.consumer = format!("workers_{tag}");
    config
}

/// Points every outside service of `config` at a running sandbox.
pub fn use_sandbox(config: &mut Config, sandbox: &oa_sandbox::Sandbox) {
    let base = format!("http://{}", sandbox.http_addr);
    // The sandbox is the one loopback address the egress client admits (in development).
    config.sandbox.http_listen = sandbox.http_addr;
    for provider in config.llm.providers.values_mut() {
        provider.base_url = base.clone();
    }
    config.channels.sms_url = format!("{base}/sms/messages");
    config.channels.smtp_host = sandbox.smtp_addr.ip().to_string();
    config.channels.smtp_port = sandbox.smtp_addr.port();
    for (product, endpoint) in config.actions.endpoints.iter_mut() {
        *endpoint = format!("{base}/products/{product}");
    }
}

/// A plane the harness started.
struct Launched {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    config: Config,
}

impl TestPlane {
    /// The plane's Prometheus text, from its admin port.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        let addr = self.metrics_addr.context("this plane serves no metrics")?;
        let response = self.http.get(format!("http://{addr}/metrics")).send().await?;
        anyhow::ensure!(response.status().is_success(), "/metrics answered {}", response.status());
        Ok(response.text().await?)
    }

    pub async fn start() -> anyhow::Result<TestPlane> {
        TestPlane::start_with(|_| {}).await
    }

    /// Starts a plane after `adjust` has changed its config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<TestPlane> {
        TestPlane::start_roles(&oa_plane::ROLES, adjust).await
    }

    /// Starts only `roles` (a crash test runs its workers as separate processes).
    pub async fn start_roles(
        roles: &[&'static str],
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestPlane> {
        init_logs();
        let db = TestDb::create().await?;
        let dir = TempDir::new()?;
        let jwks_path = dir.0.join("jwks.json");
        let jwks = oa_auth::dev::jwks_for_private_pem(HUB_TEST_KEY_PEM, HUB_TEST_KID)?;
        std::fs::write(&jwks_path, serde_json::to_vec(&jwks)?)?;
        let sandbox_shutdown = CancellationToken::new();
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = oa_sandbox::start(any_port, any_port, sandbox_shutdown.clone()).await?;
        let mut config = test_config(&db, Some(jwks_path));
        use_sandbox(&mut config, &sandbox);
        adjust(&mut config);
        config.validate()?;
        let Launched { shutdown, running, addr, metrics_addr, config } =
            TestPlane::launch(config, roles).await?;
        Ok(TestPlane {
            db,
            sandbox: sandbox.recorder,
            config,
            addr,
            metrics_addr,
            http: reqwest::Client::new(),
            roles: roles.to_vec(),
            shutdown,
            running: Some(running),
            sandbox_shutdown,
            _dir: dir,
        })
    }

    async fn launch(config: Config, roles: &[&'static str]) -> anyhow::Result<Launched> {
        let plane = oa_plane::Plane::bind(config, roles).await?;
        let addr = plane.gateway_addr().context("the test plane runs a gateway")?;
        let metrics_addr = plane.metrics_addr();
        // With port 0, the plane pointed the services' endpoints at the port it bound.
        let config = plane.config().clone();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let running = tokio::spawn(async move {
            if let Err(error) = plane.run(stop).await {
                eprintln!("test plane stopped: {error:#}");
            }
        });
        Ok(Launched { shutdown, running, addr, metrics_addr, config })
    }

    /// Stops every service of the plane and starts them again on the same database, bus, Redis
    /// and sandbox (new ports): nothing of the first run survives but what they persisted.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await?;
        }
        let mut config = self.config.clone();
        config.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if config.telemetry.metrics_addr.is_some() {
            config.telemetry.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        let launched = TestPlane::launch(config, &self.roles).await?;
        self.shutdown = launched.shutdown;
        self.running = Some(launched.running);
        (self.addr, self.metrics_addr, self.config) = (launched.addr, launched.metrics_addr, launched.config);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A Hub token for `org_id` with `role`, signed by the test Hub key.
    pub fn token(&self, org_id: &str, role: &str) -> String {
        let claims = oa_auth::dev::claims(&self.config.auth, org_id, role, "user-1", 3600);
        oa_auth::dev::sign(HUB_TEST_KEY_PEM, HUB_TEST_KID, &claims).expect("the test key signs")
    }

    /// Sends `method path` as a Hub user of `org_id` with `role`.
    pub fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        org_id: &str,
        role: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(self.token(org_id, role))
    }

    /// `GET path` as a viewer of `org_id` (reads are open to every role): the status and the JSON
    /// body (`null` when the body is not JSON).
    pub async fn get_json(&self, path: &str, org_id: &str) -> (u16, serde_json::Value) {
        let response = self
            .as_user(reqwest::Method::GET, path, org_id, "viewer")
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends `method path` with an integration key.
    pub fn as_key(&self, method: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).header("x-integration-key", key)
    }
}

impl TestPlane {
    /// Polls `check` every 50 ms until it returns `Some`, for at most `seconds`.
    /// Waits until the workers hold nothing more: every message on the bus and work streams has
    /// been delivered and acknowledged. Then nothing more happens unless something new arrives, so
    /// a test can count what happened without sleeping on it.
    pub async fn bus_settled(&self, seconds: u64) -> anyhow::Result<()> {
        let client = oa_bus::connect(&self.config.nats).await?;
        let jetstream = oa_bus::async_nats::jetstream::new(client);
        let topology = oa_bus::Topology::new(&self.config.nats);
        let consumers = [(&topology.bus_stream, "bus"), (&topology.work_stream, "work")];
        let settled = self
            .eventually(seconds, || async {
                for (stream, kind) in consumers {
                    let stream = jetstream.get_stream(stream).await.ok()?;
                    let mut consumer = stream
                        .get_consumer::<oa_bus::async_nats::jetstream::consumer::pull::Config>(&format!(
                            "{}_{kind}",
                            topology.consumer
                        ))
                        .await
                        .ok()?;
                    let info = consumer.info().await.ok()?;
                    if info.num_pending > 0 || info.num_ack_pending > 0 {
                        return None;
                    }
                }
                // And no execution is queued or running.
                let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM executions.runnable")
                    .fetch_one(&self.db.admin)
                    .await
                    .ok()?;
                (queued == 0).then_some(())
            })
            .await;
        settled.context("the bus did not settle")
    }

    pub async fn eventually<T, F, Fut>(&self, seconds: u64, check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(seconds, check).await
    }

    /// Publishes an envelope straight onto the plane's bus, as a product with NATS access does.
    pub async fn publish_on_bus(&self, envelope: &oa_bus::Envelope) -> anyhow::Result<()> {
        let client = oa_bus::connect(&self.config.nats).await?;
        let jetstream = oa_bus::async_nats::jetstream::new(client);
        let topology = oa_bus::Topology::new(&self.config.nats);
        oa_bus::ensure_streams(&jetstream, &topology).await?;
        oa_bus::publish_event(&jetstream, &topology, envelope).await?;
        Ok(())
    }

    /// Publishes many envelopes straight onto the bus at once (all sent, then all confirmed).
    pub async fn publish_many_on_bus(&self, envelopes: &[oa_bus::Envelope]) -> anyhow::Result<()> {
        let client = oa_bus::connect(&self.config.nats).await?;
        let jetstream = oa_bus::async_nats::jetstream::new(client);
        let topology = oa_bus::Topology::new(&self.config.nats);
        oa_bus::ensure_streams(&jetstream, &topology).await?;
        for chunk in envelopes.chunks(1_000) {
            let sends = chunk.iter().map(|envelope| oa_bus::publish_event(&jetstream, &topology, envelope));
            for sent in futures::future::join_all(sends).await {
                sent?;
            }
        }
        Ok(())
    }

    /// Publishes raw bytes on an event subject of the plane (for malformed events).
    pub async fn publish_raw_on_bus(
        &self,
        org_id: &str,
        product: &str,
        event_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        let client = oa_bus::connect(&self.config.nats).await?;
        let jetstream = oa_bus::async_nats::jetstream::new(client);
        let topology = oa_bus::Topology::new(&self.config.nats);
        oa_bus::ensure_streams(&jetstream, &topology).await?;
        let subject = topology.event_subject(org_id, product, event_type);
        oa_bus::publish_raw(&jetstream, subject, &unique("raw_"), bytes.into()).await?;
        Ok(())
    }
}

/// The environment that gives a separate `one-agents` process the same plane as `config`
/// (database, bus, services, sandbox), for crash tests that kill it.
pub fn process_env(config: &Config) -> Vec<(String, String)> {
    use secrecy::ExposeSecret;
    let mut env = vec![
        ("ONE_AGENTS_DATABASE__URL".into(), config.database.url.expose_secret().to_owned()),
        ("ONE_AGENTS_NATS__URL".into(), config.nats.url.clone()),
        ("ONE_AGENTS_NATS__SUBJECT_PREFIX".into(), config.nats.subject_prefix.clone()),
        ("ONE_AGENTS_NATS__BUS_STREAM".into(), config.nats.bus_stream.clone()),
        ("ONE_AGENTS_NATS__WORK_STREAM".into(), config.nats.work_stream.clone()),
        ("ONE_AGENTS_NATS__CONSUMER".into(), config.nats.consumer.clone()),
        ("ONE_AGENTS_NATS__ACK_WAIT_SECONDS".into(), config.nats.ack_wait_seconds.to_string()),
        ("ONE_AGENTS_REDIS__URL".into(), config.redis.url.expose_secret().to_owned()),
        ("ONE_AGENTS_CHANNELS__SMS_URL".into(), config.channels.sms_url.clone()),
        ("ONE_AGENTS_SANDBOX__HTTP_LISTEN".into(), config.sandbox.http_listen.to_string()),
        ("ONE_AGENTS_CHANNELS__SMTP_PORT".into(), config.channels.smtp_port.to_string()),
        ("ONE_AGENTS_TELEMETRY__LOG_FILTER".into(), "warn".into()),
        // A child process picks its own ports (its services' endpoints then point at itself).
        ("ONE_AGENTS_GRPC__LISTEN".into(), "127.0.0.1:0".into()),
        ("ONE_AGENTS_GATEWAY__LISTEN".into(), "127.0.0.1:0".into()),
        ("ONE_AGENTS_TELEMETRY__METRICS_ADDR".into(), "127.0.0.1:0".into()),
        (
            "ONE_AGENTS_CREDITS__RESERVATION_TTL_SECONDS".into(),
            config.credits.reservation_ttl_seconds.to_string(),
        ),
    ];
    for (service, endpoint) in &config.grpc.endpoints {
        env.push((format!("ONE_AGENTS_GRPC__ENDPOINTS__{}", service.to_uppercase()), endpoint.clone()));
    }
    for (name, provider) in &config.llm.providers {
        env.push((
            format!("ONE_AGENTS_LLM__PROVIDERS__{}__BASE_URL", name.to_uppercase()),
            provider.base_url.clone(),
        ));
    }
    for (product, endpoint) in &config.actions.endpoints {
        env.push((format!("ONE_AGENTS_ACTIONS__ENDPOINTS__{}", product.to_uppercase()), endpoint.clone()));
    }
    env
}

/// Polls `check` every 50 ms until it gives a value, for at most `seconds`.
pub async fn eventually<T, F, Fut>(seconds: u64, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if let Some(value) = check().await {
            return Some(value);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}
