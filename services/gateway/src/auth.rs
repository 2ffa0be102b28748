//! Resolves every `/api/*` request to a [`Caller`]: an `X-Integration-Key`, or a Hub JWT from
//! `Authorization: Bearer` or the session cookie. Every refusal, whatever its reason, answers the
//! same 401 body; the reason goes to the log.

use oa_telemetry::metrics;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use http::{HeaderMap, HeaderValue, Method, header};
use oa_auth::AuthError;
use oa_domain::{ApiError, Caller, Principal};

use crate::AppState;
use crate::error::Failure;
use crate::ratelimit::Decision;

pub const INTEGRATION_KEY_HEADER: &str = "x-integration-key";
const KNOWN_ORG_TTL: Duration = Duration::from_secs(60);

/// Orgs recently seen to exist, with their tier, so a Hub token costs no query per request.
pub struct KnownOrgs {
    /// Org id → tier, for [`KNOWN_ORG_TTL`]; the least recently used go first past 100,000.
    seen: moka::sync::Cache<String, String>,
}

impl Default for KnownOrgs {
    fn default() -> Self {
        KnownOrgs {
            seen: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(KNOWN_ORG_TTL).build(),
        }
    }
}

impl KnownOrgs {
    fn tier(&self, org_id: &str) -> Option<String> {
        self.seen.get(org_id)
    }

    fn insert(&self, org_id: &str, tier: &str) {
        self.seen.insert(org_id.to_owned(), tier.to_owned());
    }
}

/// A 401, counted under `reason` in `oneagents_auth_refusals_total`.
fn refused(reason: &'static str) -> ApiError {
    count_refusal(reason);
    ApiError::unauthorized()
}

fn count_refusal(reason: &'static str) {
    metrics::counter!(metrics::AUTH_REFUSALS, "role" => "gateway", "reason" => reason).increment(1);
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(presented) = headers.get(INTEGRATION_KEY_HEADER) {
        let presented = presented.to_str().map_err(|_| refused("malformed_key"))?;
        let resolved = state.keys.resolve(presented).await.map_err(|e| match e {
            oa_tenancy::TenancyError::Store(store) => ApiError::from(store),
            other => ApiError::internal_from("key resolution", &other),
        })?;
        let Some(key) = resolved else {
            tracing::info!("refused an unknown, malformed or revoked integration key");
            return Err(refused("unknown_key"));
        };
        let principal = match key.product {
            Some(product) => Principal::Product { key_id: key.key_id, product },
            None => Principal::IntegrationKey { key_id: key.key_id, scopes: key.scopes },
        };
        return Ok(Caller { org_id: key.org_id, tier: key.tier, principal });
    }

    let jar = CookieJar::from_headers(headers);
    let token = match bearer_token(headers) {
        Some(token) => token.to_owned(),
        None => match jar.get(&state.config.auth.session_cookie) {
            Some(cookie) => cookie.value().to_owned(),
            None => return Err(refused("no_credentials")),
        },
    };
    let Some(verifier) = &state.verifier else {
        tracing::info!("refused a Hub token: no JWKS is configured");
        return Err(refused("no_jwks"));
    };
    let mut caller = verifier.verify(&token).await.map_err(|e| match e {
        AuthError::Refused(reason) => {
            tracing::info!(%reason, "refused a Hub token");
            refused("invalid_token")
        }
        AuthError::KeysUnavailable(reason) => {
            tracing::error!(%reason, "cannot load the Hub JWKS");
            ApiError::unavailable("identity provider")
        }
    })?;
    caller.tier = match state.known_orgs.tier(&caller.org_id) {
        Some(tier) => tier,
        None => {
            let org = state.orgs.get(&caller.org_id).await.map_err(|e| match e {
                oa_tenancy::TenancyError::Store(store) => ApiError::from(store),
                other => ApiError::internal_from("org lookup", &other),
            })?;
            let Some(org) = org else {
                tracing::info!(org_id = %caller.org_id, "refused a Hub token for an org this plane does not serve");
                return Err(refused("unknown_org"));
            };
            state.known_orgs.insert(&org.id, &org.tier);
            org.tier
        }
    };
    Ok(caller)
}

/// Whether the request authenticates with the Hub session cookie (not a key, not a bearer token):
/// a browser sends that cookie on its own, so such writes must prove they come from the Hub.
fn by_cookie(headers: &HeaderMap) -> bool {
    headers.get(INTEGRATION_KEY_HEADER).is_none() && bearer_token(headers).is_none()
}

/// A cookie-authenticated write must be JSON (a cross-site form cannot send it without a
/// preflight) and come from a Hub origin (`Origin`, else `Sec-Fetch-Site: same-origin`).
fn refuse_cross_site(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    let refused = |why: &str| ApiError::forbidden(format!("Cross-site request refused: {why}"));
    if matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH) {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if !json {
            return Err(refused("a write with the session cookie must be sent as application/json"));
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin)
            if state.config.gateway.hub_origins.iter().any(|o| o.trim_end_matches('/') == origin) =>
        {
            Ok(())
        }
        Some(_) => Err(refused("the request's Origin is not one of the Hub's")),
        None => match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            Some("same-origin") => Ok(()),
            _ => Err(refused("a write with the session cookie needs the Hub's Origin")),
        },
    }
}

/// The address the request came from (the peer of the connection).
fn client_address(request: &Request) -> Option<std::net::IpAddr> {
    request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())
}

fn too_many(limit: &'static str, retry_after_seconds: u64, message: String) -> Response {
    metrics::counter!(metrics::RATE_LIMITED, "role" => "gateway", "limit" => limit).increment(1);
    let mut response = Failure(ApiError::new(oa_domain::ErrorCode::RateLimited, message)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    response
}

/// Authenticates, applies the viewer rule and the rate limits, then hands the request on with
/// its [`Caller`] in the extensions.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let client = client_address(&request).filter(|_| state.limiter.enabled());
    if let Some(client) = client
        && let Ok(mut redis) = state.redis().await
        && let Ok(Some(retry_after)) = state.limiter.auth_failures_exceeded(&mut redis, client).await
    {
        return too_many(
            "failed_sign_ins",
            retry_after,
            format!("Too many failed sign-ins; retry in {retry_after} seconds"),
        );
    }
    let caller = match resolve(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => {
            if error.code == oa_domain::ErrorCode::Unauthorized
                && let Some(client) = client
                && let Ok(mut redis) = state.redis().await
                && let Err(e) = state.limiter.record_auth_failure(&mut redis, client).await
            {
                tracing::warn!(error = %e, "cannot count a failed authentication");
            }
            return Failure(error).into_response();
        }
    };
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe
        && by_cookie(request.headers())
        && let Err(error) = refuse_cross_site(&state, &request)
    {
        count_refusal("cross_site");
        return Failure(error).into_response();
    }
    tracing::Span::current().record("org_id", caller.org_id.as_str());

    // Viewers are read-only everywhere; routes check finer permissions themselves.
    if caller.is_viewer() && !safe {
        count_refusal("viewer_write");
        return Failure(ApiError::forbidden("Viewers have read-only access")).into_response();
    }

    let mut remaining = None;
    if state.limiter.enabled() {
        match state.redis().await {
            Ok(mut redis) => match state.limiter.check(&mut redis, &caller).await {
                Ok(Decision::Allowed { remaining: left }) => remaining = Some(left),
                Ok(Decision::Limited { retry_after_seconds }) => {
                    let message = format!("Too many requests; retry in {retry_after_seconds} seconds");
                    return too_many("requests", retry_after_seconds, message);
                }
                Err(error) => tracing::warn!(%error, "rate limiter unavailable; request allowed"),
            },
            Err(error) => tracing::warn!(%error, "rate limiter unavailable; request allowed"),
        }
    }

    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some(left) = remaining {
        response.headers_mut().insert("x-ratelimit-remaining", HeaderValue::from(left));
    }
    response
}
