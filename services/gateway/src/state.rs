//! The state every handler shares: the config, the stores the gateway owns, the clients of the
//! services, the limiter and the connections.

use std::sync::Arc;
use std::time::Duration;

use oa_auth::HubVerifier;
use oa_config::Config;
use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::approvals::approvals_client::ApprovalsClient;
use oa_proto::catalog::catalog_client::CatalogClient;
use oa_proto::credits::credits_client::CreditsClient;
use oa_proto::executions::executions_client::ExecutionsClient;
use oa_tenancy::{KeyStore, OrgStore};
use sqlx::PgPool;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::auth;
use crate::ratelimit::RateLimiter;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub pool: PgPool,
    pub keys: KeyStore,
    pub orgs: OrgStore,
    pub verifier: Option<HubVerifier>,
    pub known_orgs: auth::KnownOrgs,
    pub limiter: RateLimiter,
    pub nats: Option<async_nats::Client>,
    pub agents: AgentsClient<Channel>,
    pub catalog: CatalogClient<Channel>,
    pub executions: ExecutionsClient<Channel>,
    pub approvals: ApprovalsClient<Channel>,
    pub credits: CreditsClient<Channel>,
    pub topology: oa_bus::Topology,
    pub(crate) redis_client: redis::Client,
    pub(crate) redis: OnceCell<redis::aio::ConnectionManager>,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// A request to a service carrying the caller, the service credential and the trace context.
    pub fn outgoing<T>(&self, message: T, caller: &oa_domain::Caller) -> tonic::Request<T> {
        oa_auth::service::outgoing(message, caller, &self.config.grpc.service_token)
    }

    /// The shared Redis connection, opened on first use so the gateway starts while Redis is down.
    pub async fn redis(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        self.redis
            .get_or_try_init(|| {
                redis::aio::ConnectionManager::new_with_config(self.redis_client.clone(), config)
            })
            .await
            .cloned()
    }
}
