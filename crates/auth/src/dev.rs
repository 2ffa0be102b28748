//! Development tokens: `one-agents dev-token` signs Hub-style JWTs with a local RSA key, and the
//! local stack serves that key's public half as the JWKS. Nothing here runs unless a dev signing
//! key is configured, which `oa_config::Config::validate` refuses in production.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

use crate::jwt::HubClaims;

#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    #[error("cannot read the dev signing key {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the dev signing key is not an RSA private key in PEM: {0}")]
    Parse(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn private_key(pem: &str) -> Result<rsa::RsaPrivateKey, DevKeyError> {
    rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| DevKeyError::Parse(e.to_string()))
}

pub fn read_pem(path: &Path) -> Result<String, DevKeyError> {
    std::fs::read_to_string(path)
        .map_err(|e| DevKeyError::Read { path: path.display().to_string(), reason: e.to_string() })
}

/// The JWKS (`{"keys":[...]}`) holding the public half of an RSA private key in PEM.
pub fn jwks_for_private_pem(pem: &str, kid: &str) -> Result<serde_json::Value, DevKeyError> {
    let key = private_key(pem)?;
    let public = key.to_public_key();
    Ok(json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]
    }))
}

/// The public half of an RSA private key, as SubjectPublicKeyInfo PEM.
pub fn public_pem_for_private_pem(pem: &str) -> Result<String, DevKeyError> {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    private_key(pem)?
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| DevKeyError::Parse(e.to_string()))
}

/// Signs `claims` with RS256 under `kid`.
pub fn sign(pem: &str, kid: &str, claims: &HubClaims) -> Result<String, DevKeyError> {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| DevKeyError::Parse(e.to_string()))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| DevKeyError::Sign(e.to_string()))
}

/// Claims for a token valid from now for `ttl_seconds`.
pub fn claims(
    config: &oa_config::AuthConfig,
    org_id: &str,
    role: &str,
    sub: &str,
    ttl_seconds: i64,
) -> HubClaims {
    let now = chrono::Utc::now().timestamp();
    HubClaims {
        sub: sub.to_owned(),
        org_id: org_id.to_owned(),
        role: role.to_owned(),
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        exp: now + ttl_seconds,
        nbf: Some(now - 1),
        iat: Some(now),
    }
}
