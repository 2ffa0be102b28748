//! The plane as one process: binds the gateway and the gRPC server of the services this process
//! runs, seeds what the services ship with, and runs them until shutdown. The `one-agents` binary
//! and the test kit both start the plane through [`Plane`], so tests run the same wiring.

mod admin;

use std::net::SocketAddr;

use std::time::Duration;

use anyhow::{Context, bail};
use backon::{ExponentialBuilder, Retryable};
use oa_config::Config;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// The roles this build runs.
pub const ROLES: [&str; 7] = ["gateway", "agents", "catalog", "executions", "approvals", "credits", "worker"];
const GRPC_ROLES: [&str; 5] = ["agents", "catalog", "executions", "approvals", "credits"];

/// Parses `all` or a comma-separated list of roles.
pub fn parse_roles(services: &str) -> anyhow::Result<Vec<&'static str>> {
    if services.trim() == "all" {
        return Ok(ROLES.to_vec());
    }
    let mut roles = Vec::new();
    for name in services.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match ROLES.iter().find(|role| **role == name) {
            Some(role) => roles.push(*role),
            None => bail!("unknown service {name:?}; this build runs: {}", ROLES.join(", ")),
        }
    }
    if roles.is_empty() {
        bail!("--services needs `all` or a list of: {}", ROLES.join(", "));
    }
    Ok(roles)
}

/// The `role` label of what a process does as a whole (its pool, memory and CPU): its one role,
/// `all`, or the roles it runs joined by `+`.
pub fn process_role(roles: &[&'static str]) -> String {
    if ROLES.iter().all(|role| roles.contains(role)) { "all".to_owned() } else { roles.join("+") }
}

pub struct Plane {
    config: Config,
    roles: Vec<&'static str>,
    gateway: Option<oa_gateway::Gateway>,
    grpc: Option<TcpListener>,
    admin: Option<TcpListener>,
}

impl Plane {
    /// Binds every listener. With `grpc.listen` on port 0, the endpoints of the services this
    /// process runs are pointed at the port that was picked, so a test plane talks to itself.
    pub async fn bind(mut config: Config, roles: &[&'static str]) -> anyhow::Result<Plane> {
        // A worker serves the gRPC health protocol too, for its readiness probe.
        let grpc = if roles.iter().any(|r| GRPC_ROLES.contains(r) || *r == "worker") {
            let listener = TcpListener::bind(config.grpc.listen)
                .await
                .with_context(|| format!("binding the gRPC server on {}", config.grpc.listen))?;
            if config.grpc.listen.port() == 0 {
                let scheme = if config.grpc.tls.is_some() { "https" } else { "http" };
                let url = format!("{scheme}://{}", listener.local_addr()?);
                for role in GRPC_ROLES.iter().filter(|role| roles.contains(role)) {
                    config.grpc.endpoints.insert((*role).to_owned(), url.clone());
                }
            }
            Some(listener)
        } else {
            None
        };
        let gateway = if roles.contains(&"gateway") {
            Some(oa_gateway::Gateway::bind(config.clone()).await?)
        } else {
            None
        };
        let admin = match config.telemetry.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics port on {addr}"))?,
            ),
            None => None,
        };
        // No admin port, no recorder: every metric call is then a no-op.
        if admin.is_some() {
            oa_telemetry::metrics::install();
            oa_telemetry::metrics::allow_orgs(&config.telemetry.org_allowlist);
            let providers: Vec<String> = config.llm.providers.keys().cloned().collect();
            for role in roles {
                oa_telemetry::metrics::prime(role, &providers);
            }
        }
        Ok(Plane { config, roles: roles.to_vec(), gateway, grpc, admin })
    }

    /// The admin port serving `/metrics`, when `telemetry.metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(oa_gateway::Gateway::local_addr)
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Seeds the shipped catalog, templates and system agents, then serves until `shutdown`.
    /// On `shutdown` every role drains (see [`oa_config::ShutdownConfig`]); what has not stopped
    /// when the grace ends is cut off, so the process always exits within it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        let (worker_ready, _) = tokio::sync::watch::channel(false);
        let pool = oa_store::app_pool(&self.config.database)?;
        let nats = oa_bus::connect_options(&self.config.nats)
            .retry_on_initial_connect()
            .connection_timeout(std::time::Duration::from_secs(3))
            .connect(self.config.nats.url.as_str())
            .await
            .context("connecting to NATS")?;
        if self.roles.iter().any(|r| matches!(*r, "gateway" | "executions" | "approvals" | "worker")) {
            let topology = oa_bus::Topology::new(&self.config.nats);
            let jetstream = oa_bus::async_nats::jetstream::new(nats.clone());
            if let Err(error) = oa_bus::ensure_streams(&jetstream, &topology).await {
                tracing::warn!(%error, "cannot create the streams yet; the worker retries at start");
            }
        }
        if let Some(listener) = self.admin {
            let router = admin::router(process_role(&self.roles), pool.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("the metrics server")
            });
        }
        if let Some(listener) = self.grpc {
            // The standard gRPC health protocol, open to probes (no service credential): the
            // server ("") is SERVING once the database has answered and the seeds are in.
            let (reporter, health_service) = tonic_health::server::health_reporter();

            let mut server = tonic::transport::Server::builder().layer(oa_telemetry::grpc::GrpcServerLayer);
            if let Some(files) = &self.config.grpc.tls {
                server = server
                    .tls_config(oa_auth::service::server_tls(files)?)
                    .context("the gRPC TLS identity")?;
            }
            let mut router = server.add_service(health_service).add_service(
                oa_auth::service::Diagnostics::guarded("plane", self.config.grpc.service_token.clone()),
            );
            let mut served: Vec<&'static str> = Vec::new();
            let seed_catalog = self.roles.contains(&"catalog");
            let seed_agents = self.roles.contains(&"agents");
            if seed_catalog {
                router = router.add_service(oa_catalog::CatalogService::build(pool.clone(), &self.config)?);
                served.push("oneagents.catalog.v1.Catalog");
            }
            if seed_agents {
                router = router.add_service(oa_agents::AgentsService::build(
                    pool.clone(),
                    Some(nats.clone()),
                    &self.config,
                )?);
                served.push("oneagents.agents.v1.Agents");
            }
            if self.roles.contains(&"credits") {
                router = router.add_service(oa_credits::CreditsService::build(pool.clone(), &self.config));
                served.push("oneagents.credits.v1.Credits");
            }
            if self.roles.contains(&"executions") {
                router = router.add_service(oa_executions::ExecutionsService::build(
                    pool.clone(),
                    nats.clone(),
                    &self.config,
                )?);
                served.push("oneagents.executions.v1.Executions");
                let (pool, stop) = (pool.clone(), shutdown.clone());
                tasks.spawn(async move {
                    oa_executions::gauges::run(pool, stop).await;
                    Ok(())
                });
            }
            if self.roles.contains(&"approvals") {
                let shared = oa_approvals::Shared::new(pool.clone(), nats.clone(), &self.config);
                router =
                    router.add_service(oa_approvals::ApprovalsService::build(shared.clone(), &self.config));
                served.push("oneagents.approvals.v1.Approvals");
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    oa_approvals::sweeper::run(shared, stop).await;
                    Ok(())
                });
            }
            // Seed before serving when the database answers; when it does not, serve anyway (calls
            // answer 503 and /readyz says why) and keep trying in the background.
            let health = Health::new(reporter);
            for service in &served {
                health.set(service, false).await;
            }
            if self.roles.contains(&"worker") {
                health.set(WORKER_HEALTH, false).await;
                let health = health.clone();
                let mut ready = worker_ready.subscribe();
                tokio::spawn(async move {
                    loop {
                        let consuming = *ready.borrow_and_update();
                        health.set(WORKER_HEALTH, consuming).await;
                        if ready.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
            let seeded = {
                let (health, served) = (health.clone(), served.clone());
                move |ok: bool| async move {
                    for service in &served {
                        health.set(service, ok).await;
                    }
                }
            };
            if let Err(error) = seed(&pool, seed_catalog, seed_agents, &nats, &self.config).await {
                tracing::warn!(error = %error, "cannot seed yet; retrying in the background");
                let stop = shutdown.clone();
                let pool = pool.clone();
                let (nats, config) = (nats.clone(), self.config.clone());
                let seeded = seeded.clone();
                tokio::spawn(async move {
                    let attempt = || seed(&pool, seed_catalog, seed_agents, &nats, &config);
                    let seeding = attempt
                        .retry(forever(Duration::from_millis(500), Duration::from_secs(10)))
                        .notify(|error, _| tracing::warn!(error = %error, "cannot seed yet"));
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = seeding => {
                            seeded(true).await;
                            tracing::info!("seeded the catalog, templates and system agents");
                        }
                    }
                });
            } else {
                seeded(true).await;
            }
            // Draining: probes see NOT_SERVING from the moment shutdown begins.
            let draining = health.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                draining.drain().await;
            });
            let stop = shutdown.clone();
            tracing::info!(addr = %listener.local_addr()?, roles = ?self.roles, "gRPC services listening");
            tasks.spawn(async move {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
                    .await
                    .context("gRPC server")
            });
        }
        if self.roles.contains(&"worker") {
            let worker = oa_worker::WorkerConfig {
                pool: pool.clone(),
                nats: nats.clone(),
                config: self.config.clone(),
                ready: worker_ready,
            };
            let stop = shutdown.clone();
            tasks.spawn(async move {
                // The worker needs the services up; retry its start until they answer.
                let start = || {
                    let config = oa_worker::WorkerConfig {
                        pool: worker.pool.clone(),
                        nats: worker.nats.clone(),
                        config: worker.config.clone(),
                        ready: worker.ready.clone(),
                    };
                    oa_worker::run(config, stop.clone())
                };
                // Once shutdown has begun, a worker that stopped is done, whatever it returned.
                let _ = start
                    .retry(forever(Duration::from_millis(200), Duration::from_secs(5)))
                    .when(|_| !stop.is_cancelled())
                    .notify(|error, _| tracing::warn!(error = %format!("{error:#}"), "worker stopped; restarting"))
                    .await;
                Ok(())
            });
        }
        if let Some(gateway) = self.gateway {
            let stop = shutdown.clone();
            tasks.spawn(async move { gateway.run(stop).await });
        }
        let grace = self.config.shutdown.grace();
        let cut_off = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::pin!(cut_off);
        let mut outcome = Ok(());
        loop {
            let result = tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(result) => result,
                    None => break,
                },
                () = &mut cut_off => {
                    tracing::warn!(grace_seconds = grace.as_secs(), "the grace ended before every role stopped; cutting off the rest");
                    tasks.abort_all();
                    break;
                }
            };
            let result = result.context("a service task panicked").and_then(|r| r);
            if !shutdown.is_cancelled() {
                // One role ending ends the process: a half-running plane is worse than none.
                shutdown.cancel();
                outcome = outcome.and(result).and(Err(anyhow::anyhow!("a service stopped unexpectedly")));
            } else {
                outcome = outcome.and(result);
            }
        }
        outcome
    }
}

async fn seed(
    pool: &sqlx::PgPool,
    catalog: bool,
    agents: bool,
    nats: &oa_bus::async_nats::Client,
    config: &Config,
) -> anyhow::Result<()> {
    if catalog {
        oa_catalog::seed_catalog(pool).await.context("seeding the event catalog")?;
    }
    if agents && oa_agents::seed_agents(pool).await.context("seeding templates and system agents")? {
        // Running workers drop their indexes and pick up the shipped system agents.
        let subject = oa_bus::Topology::new(&config.nats).agents_changed_subject("system");
        if let Err(error) = nats.publish(subject, "changed".into()).await {
            tracing::warn!(%error, "cannot announce the updated system agents; workers catch up within a minute");
        }
    }
    Ok(())
}

/// Retries with doubling delays from `first` up to `longest`, without end: for starts that wait on
/// other roles or the database.
fn forever(first: Duration, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(longest)
        .without_max_times()
        .with_jitter()
}

/// The worker's entry in the gRPC health protocol: SERVING while it consumes the bus.
pub const WORKER_HEALTH: &str = "oneagents.worker.v1.Worker";

/// The gRPC health statuses of a process: each service it serves, and the server ("") SERVING
/// only when all of them are.
#[derive(Clone)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    state: std::sync::Arc<tokio::sync::Mutex<HealthState>>,
}

#[derive(Default)]
struct HealthState {
    services: std::collections::BTreeMap<&'static str, bool>,
    draining: bool,
}

impl Health {
    fn new(reporter: tonic_health::server::HealthReporter) -> Health {
        Health { reporter, state: Default::default() }
    }

    async fn set(&self, service: &'static str, serving: bool) {
        let mut state = self.state.lock().await;
        if state.draining {
            return;
        }
        state.services.insert(service, serving);
        if let Some(role) = role_of_health(service) {
            oa_telemetry::metrics::role_ready(role, serving);
        }
        let all = state.services.values().all(|ok| *ok);
        self.reporter.set_service_status(service, status(serving)).await;
        self.reporter.set_service_status("", status(all)).await;
    }

    /// From now on everything is NOT_SERVING.
    async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        for service in state.services.keys() {
            self.reporter.set_service_status(*service, status(false)).await;
            if let Some(role) = role_of_health(service) {
                oa_telemetry::metrics::role_ready(role, false);
            }
        }
        self.reporter.set_service_status("", status(false)).await;
    }
}

/// The role behind a gRPC health entry (`oneagents.agents.v1.Agents` → `agents`).
fn role_of_health(service: &str) -> Option<&'static str> {
    let name = service.rsplit('.').next()?.to_ascii_lowercase();
    ROLES.iter().find(|role| **role == name).copied()
}

fn status(serving: bool) -> tonic_health::ServingStatus {
    if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing }
}
