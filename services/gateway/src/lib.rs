//! The REST gateway (axum): resolves each `/api/*` request to its org and caller, applies the
//! viewer rule and the per-org and per-key rate limits, maps every error to the API's body, and
//! forwards work to the services over gRPC.
//!
//! It owns the `tenancy` schema through `oa-tenancy` (orgs and integration keys) and no other
//! table; everything else goes through a service.

pub mod auth;
pub mod error;
mod forward;
mod health;
mod me;
mod observe;
pub mod ratelimit;
mod routes;
mod state;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header;
use oa_auth::HubVerifier;
use oa_config::Config;
use oa_domain::ApiError;
use oa_tenancy::{KeyStore, OrgStore};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::approvals::approvals_client::ApprovalsClient;
use oa_proto::catalog::catalog_client::CatalogClient;
use oa_proto::credits::credits_client::CreditsClient;
use oa_proto::executions::executions_client::ExecutionsClient;
use tonic::transport::Channel;

use crate::error::Failure;
use crate::ratelimit::RateLimiter;
pub use crate::state::{AppState, Inner};

pub struct Gateway {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

impl Gateway {
    /// Connects (lazily where it can) and binds `config.gateway.listen`; port 0 picks a free one.
    pub async fn bind(config: Config) -> anyhow::Result<Gateway> {
        let pool = oa_store::app_pool(&config.database)?;
        let redis_client = redis::Client::open(config.redis.url.expose_secret()).context("redis url")?;
        let nats = oa_bus::connect_options(&config.nats)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(config.nats.url.as_str())
            .await
            .map_err(|e| tracing::warn!(error = %e, "cannot reach NATS yet"))
            .ok();
        let listener = TcpListener::bind(config.gateway.listen)
            .await
            .with_context(|| format!("binding the gateway on {}", config.gateway.listen))?;
        let channel = |service: &str| -> anyhow::Result<Channel> {
            let endpoint = config.endpoint(service)?;
            oa_auth::service::channel(endpoint, &config.grpc)
                .map_err(|e| anyhow::anyhow!("{service} endpoint: {e}"))
        };
        let agents = AgentsClient::new(channel("agents")?);
        let catalog = CatalogClient::new(channel("catalog")?);
        let executions = ExecutionsClient::new(channel("executions")?);
        let credits = CreditsClient::new(channel("credits")?);
        let approvals = ApprovalsClient::new(channel("approvals")?);
        let state = AppState(Arc::new(Inner {
            approvals,
            agents,
            catalog,
            executions,
            credits,
            topology: oa_bus::Topology::new(&config.nats),
            keys: KeyStore::new(pool.clone()),
            orgs: OrgStore::new(pool.clone()),
            verifier: HubVerifier::from_config(&config.auth),
            known_orgs: auth::KnownOrgs::default(),
            limiter: RateLimiter::new(config.gateway.rate_limit.clone(), &config.redis.key_prefix),
            nats,
            redis_client,
            redis: OnceCell::new(),
            draining: Default::default(),
            pool,
            config,
        }));
        Ok(Gateway { listener, router: router(state.clone()), state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then drains: `/readyz` fails at once, requests are still served for
    /// `shutdown.unready_delay_ms`, then the listener closes and the requests in flight finish. What
    /// is still open when `shutdown.grace_seconds` ends is cut off.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "gateway listening");
        let drain = self.state.config.shutdown.clone();
        let state = self.state.clone();
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let (stop, unready_delay) = (shutdown.clone(), drain.unready_delay());
        let server = axum::serve(self.listener, service).with_graceful_shutdown(async move {
            stop.cancelled().await;
            state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(delay = ?unready_delay, "draining: readiness fails; closing the listener after the delay");
            tokio::time::sleep(unready_delay).await;
            tracing::info!("draining: listener closed; finishing the requests in flight");
        });
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain.grace()).await;
        };
        tokio::select! {
            served = server.into_future() => served.context("gateway server"),
            () = grace => {
                tracing::warn!(grace_seconds = drain.grace_seconds, "the grace ended with requests in flight; they are cut off");
                Ok(())
            }
        }
    }
}

/// Runs the gateway until `shutdown` fires.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::bind(config).await?.run(shutdown).await
}

/// Refuses bodies whose declared length is over the limit before reading them; bodies without a
/// length are capped by `DefaultBodyLimit` and refused by the extractors with the same 413 body.
async fn limit_declared_body(limit: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Failure(error::too_large()).into_response();
    }
    next.run(request).await
}

/// Headers every answer carries: no MIME sniffing, no framing, no referrer, a content policy that
/// lets the link page style itself and post its own form and nothing else, and HSTS when the
/// request came over https (directly or through a proxy that says so).
async fn security_headers(request: Request, next: Next) -> Response {
    let https = request.uri().scheme_str() == Some("https")
        || request.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        headers.entry(name).or_insert(http::HeaderValue::from_static(value));
    };
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    if https {
        set(headers, "strict-transport-security", "max-age=31536000; includeSubDomains");
    }
    response
}

/// Ordinary requests get `gateway.request_timeout_ms`, then 503 with the API's body; the work a
/// service was doing is not lost (it is its own transaction), only the wait is cut.
async fn request_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Failure(ApiError::new(
            oa_domain::ErrorCode::ServiceUnavailable,
            format!("The request took longer than {} ms; try again", timeout.as_millis()),
        ))
        .into_response(),
    }
}

fn api_routes() -> Router<AppState> {
    Router::new().route("/me", get(me::me)).merge(routes::router())
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.gateway.body_limit_bytes;
    let timeout = Duration::from_millis(state.config.gateway.request_timeout_ms.max(1));
    let api = api_routes()
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // `layer`, not `route_layer`: unknown routes are authenticated too, so routes cannot be probed.
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));

    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request| {
        let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
        let span = tracing::info_span!(
            "http",
            method = %request.method(),
            path = %request.uri().path(),
            request_id,
            org_id = tracing::field::Empty,
        );
        oa_telemetry::adopt_remote_parent(&span, oa_telemetry::extract_http(request.headers()));
        span
    });

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .nest("/api", api)
        .merge(routes::approvals::link_router())
        .route_layer(middleware::from_fn(observe::remember_route))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            request_timeout(timeout, request, next)
        }))
        .layer(middleware::from_fn(error::refuse_nul_in_uri))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            limit_declared_body(body_limit, request, next)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(observe::record))
        .with_state(state)
}
