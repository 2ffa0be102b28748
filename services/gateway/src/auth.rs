//! Resolves every `/api/*` request to a [`Caller`]: an `X-Integration-Key`, or a Hub JWT from
//! `Authorization: Bearer` or the session cookie. Every refusal, whatever its reason, answers the
//! same 401 body; the reason goes to the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
#[derive(Default)]
pub struct KnownOrgs {
    seen: Mutex<HashMap<String, (Instant, String)>>,
}

impl KnownOrgs {
    fn tier(&self, org_id: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(org_id).filter(|(at, _)| at.elapsed() < KNOWN_ORG_TTL).map(|(_, tier)| tier.clone())
    }

    fn insert(&self, org_id: &str, tier: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            seen.clear();
        }
        seen.insert(org_id.to_owned(), (Instant::now(), tier.to_owned()));
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if let Some(presented) = headers.get(INTEGRATION_KEY_HEADER) {
        let presented = presented.to_str().map_err(|_| ApiError::unauthorized())?;
        let resolved = state.keys.resolve(presented).await.map_err(|e| match e {
            oa_tenancy::TenancyError::Store(store) => ApiError::from(store),
            other => ApiError::internal_from("key resolution", &other),
        })?;
        let Some(key) = resolved else {
            tracing::info!("refused an unknown, malformed or revoked integration key");
            return Err(ApiError::unauthorized());
        };
        return Ok(Caller {
            org_id: key.org_id,
            tier: key.tier,
            principal: Principal::IntegrationKey { key_id: key.key_id, scopes: key.scopes },
        });
    }

    let jar = CookieJar::from_headers(headers);
    let token = match bearer_token(headers) {
        Some(token) => token.to_owned(),
        None => match jar.get(&state.config.auth.session_cookie) {
            Some(cookie) => cookie.value().to_owned(),
            None => return Err(ApiError::unauthorized()),
        },
    };
    let Some(verifier) = &state.verifier else {
        tracing::info!("refused a Hub token: no JWKS is configured");
        return Err(ApiError::unauthorized());
    };
    let mut caller = verifier.verify(&token).await.map_err(|e| match e {
        AuthError::Refused(reason) => {
            tracing::info!(%reason, "refused a Hub token");
            ApiError::unauthorized()
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
                return Err(ApiError::unauthorized());
            };
            state.known_orgs.insert(&org.id, &org.tier);
            org.tier
        }
    };
    Ok(caller)
}

/// Authenticates, applies the viewer rule and the rate limits, then hands the request on with
/// its [`Caller`] in the extensions.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let caller = match resolve(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return Failure(error).into_response(),
    };
    tracing::Span::current().record("org_id", caller.org_id.as_str());

    // Viewers are read-only everywhere; routes check finer permissions themselves.
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if caller.is_viewer() && !safe {
        return Failure(ApiError::forbidden("Viewers have read-only access")).into_response();
    }

    let mut remaining = None;
    if state.limiter.enabled() {
        match state.redis().await {
            Ok(mut redis) => match state.limiter.check(&mut redis, &caller).await {
                Ok(Decision::Allowed { remaining: left }) => remaining = Some(left),
                Ok(Decision::Limited { retry_after_seconds }) => {
                    let mut response = Failure(ApiError::new(
                        oa_domain::ErrorCode::RateLimited,
                        format!("Too many requests; retry in {retry_after_seconds} seconds"),
                    ))
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
                    return response;
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
