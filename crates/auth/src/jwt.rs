//! Hub JWT verification.
//!
//! The algorithm comes from the key, never from the token: each JWKS key is bound to one algorithm
//! (its `alg`, or the only one its key type allows), and a token whose header names another is
//! refused. `alg: none` cannot parse; HMAC keys in a JWKS are ignored, so an HS256 token signed
//! with a public key has nothing to verify against. Issuer, audience, `exp` and `nbf` are checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use oa_domain::{Caller, Principal, Role, ids};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Any reason a credential is not accepted. The reason is for logs only; clients get one body.
    #[error("credential refused: {0}")]
    Refused(String),
    /// The JWKS could not be loaded: an operator problem, not the caller's.
    #[error("the Hub's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// The claims the plane reads from a Hub token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubClaims {
    pub sub: String,
    pub org_id: String,
    pub role: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// A fixed set, for tests and embedding.
    Static(JwkSet),
}

struct VerificationKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

struct KeyCache {
    keys: HashMap<String, Arc<VerificationKey>>,
    fetched_at: Option<Instant>,
}

pub struct HubVerifier {
    source: JwksSource,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
    cache_ttl: Duration,
    min_refresh: Duration,
    cache: RwLock<KeyCache>,
    last_forced_refresh: Mutex<Option<Instant>>,
    http: reqwest::Client,
    /// Tokens verified lately, with their callers and expiry: a signature is checked once per
    /// token and [`VERIFIED_TTL`], not on every request (an RSA check costs more than the rest of
    /// a read). Cleared whenever the keys change.
    verified: moka::sync::Cache<String, (Caller, i64)>,
}

/// How long a verified token is taken on trust before its signature is checked again.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// The one algorithm a JWKS key may verify, or `None` for keys the plane will not use.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let declared = jwk.common.key_algorithm.and_then(|alg| match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    let family_fits = |alg: Algorithm| match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    let algorithm = match (&jwk.common.key_algorithm, declared) {
        (Some(_), declared) => declared?,
        (None, _) => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            // Symmetric and unknown keys never verify Hub tokens.
            _ => return None,
        },
    };
    family_fits(algorithm).then_some(algorithm)
}

fn keys_from_set(set: &JwkSet) -> HashMap<String, Arc<VerificationKey>> {
    let mut keys = HashMap::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let Some(algorithm) = algorithm_of(jwk) else {
            tracing::warn!(kid = ?jwk.common.key_id, "ignoring a JWKS key that cannot verify Hub tokens");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{index}"));
                keys.insert(kid, Arc::new(VerificationKey { key, algorithm }));
            }
            Err(error) => tracing::warn!(%error, "ignoring a malformed JWKS key"),
        }
    }
    keys
}

impl HubVerifier {
    pub fn new(source: JwksSource, config: &oa_config::AuthConfig) -> Self {
        HubVerifier {
            source,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_seconds: config.leeway_seconds,
            cache_ttl: Duration::from_secs(config.jwks_cache_seconds.max(1)),
            min_refresh: Duration::from_secs(config.jwks_min_refresh_seconds),
            cache: RwLock::new(KeyCache { keys: HashMap::new(), fetched_at: None }),
            last_forced_refresh: Mutex::new(None),
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            verified: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_TTL).build(),
        }
    }

    /// The verifier the configuration asks for, or `None` when no JWKS is configured (only
    /// integration keys are then accepted).
    pub fn from_config(config: &oa_config::AuthConfig) -> Option<Self> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(file), _) => JwksSource::File(file.clone()),
            (None, Some(url)) => JwksSource::Url(url.clone()),
            (None, None) => return None,
        };
        Some(HubVerifier::new(source, config))
    }

    async fn fetch(&self) -> Result<JwkSet, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::KeysUnavailable(e.to_string());
        match &self.source {
            JwksSource::Static(set) => Ok(set.clone()),
            JwksSource::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| unavailable(&e))?;
                serde_json::from_str(&text).map_err(|e| unavailable(&e))
            }
            JwksSource::Url(url) => {
                let response = self.http.get(url).send().await.map_err(|e| unavailable(&e))?;
                let response = response.error_for_status().map_err(|e| unavailable(&e))?;
                response.json().await.map_err(|e| unavailable(&e))
            }
        }
    }

    async fn refresh(&self) -> Result<(), AuthError> {
        let set = self.fetch().await?;
        let keys = keys_from_set(&set);
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        self.verified.invalidate_all();
        Ok(())
    }

    async fn lookup(&self, kid: &str) -> Option<Arc<VerificationKey>> {
        let cache = self.cache.read().await;
        let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.cache_ttl);
        fresh.then(|| cache.keys.get(kid).cloned()).flatten()
    }

    /// Finds the key for `kid`, refetching the JWKS when the cache is stale or the kid is
    /// unknown; refetches caused by unknown kids are limited to one per `min_refresh`.
    async fn key_for(&self, kid: &str) -> Result<Arc<VerificationKey>, AuthError> {
        if let Some(key) = self.lookup(kid).await {
            return Ok(key);
        }
        let stale = {
            let cache = self.cache.read().await;
            cache.fetched_at.is_none_or(|at| at.elapsed() >= self.cache_ttl)
        };
        let may_refresh = {
            let mut last = self.last_forced_refresh.lock().await;
            let allowed = stale || last.is_none_or(|at| at.elapsed() >= self.min_refresh);
            if allowed {
                *last = Some(Instant::now());
            }
            allowed
        };
        if may_refresh {
            self.refresh().await?;
        }
        let cache = self.cache.read().await;
        cache.keys.get(kid).cloned().ok_or_else(|| AuthError::Refused(format!("unknown kid {kid:?}")))
    }

    /// Verifies a Hub token and resolves its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if let Some((caller, exp)) = self.verified.get(token) {
            let leeway = i64::try_from(self.leeway_seconds).unwrap_or(0);
            if chrono::Utc::now().timestamp() <= exp.saturating_add(leeway) {
                return Ok(caller);
            }
            self.verified.invalidate(token);
        }
        self.verify_signed(token).await
    }

    /// Verifies a Hub token's signature and claims, and remembers it as verified.
    async fn verify_signed(&self, token: &str) -> Result<Caller, AuthError> {
        let refused = |m: String| AuthError::Refused(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused(format!("header: {e}")))?;
        let kid = match header.kid {
            Some(kid) => kid,
            None => {
                // A JWKS with exactly one usable key may serve tokens without a kid.
                self.key_for("#0").await.map(|_| "#0".to_owned())?
            }
        };
        let key = self.key_for(&kid).await?;
        if header.alg != key.algorithm {
            return Err(refused(format!(
                "alg {:?} does not match the key's {:?}",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_seconds;
        let data = jsonwebtoken::decode::<HubClaims>(token, &key.key, &validation)
            .map_err(|e| refused(format!("token: {e}")))?;
        let claims = data.claims;
        let role =
            Role::parse(&claims.role).ok_or_else(|| refused(format!("unknown role {:?}", claims.role)))?;
        if !ids::is_valid_org_id(&claims.org_id) || claims.org_id == "system" {
            return Err(refused("malformed org_id".into()));
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(refused("malformed sub".into()));
        }
        // The tier is the plane's to know, not the Hub's: the gateway fills it in.
        let caller = Caller {
            org_id: claims.org_id,
            tier: String::new(),
            principal: Principal::User { sub: claims.sub, role },
        };
        self.verified.insert(token.to_owned(), (caller.clone(), claims.exp));
        Ok(caller)
    }
}
