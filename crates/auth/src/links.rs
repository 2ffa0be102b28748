//! Signed decision links: a recipient of an approval notification decides from a phone without
//! signing in. A link's token is a JWT (HS256 under `approvals.link_secret`) bound to one gate, one
//! org and one recipient, with an expiry and an id (`jti`) that the gateway marks used in Redis, so
//! it works once.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

const AUDIENCE: &str = "one-agents:approval-link";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The recipient the link was sent to.
    pub sub: String,
    /// The gate it decides.
    pub approval_id: String,
    pub org_id: String,
    pub jti: String,
    pub exp: u64,
    pub iat: u64,
    pub aud: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("this link has expired")]
    Expired,
    #[error("this link is not valid")]
    Invalid,
    #[error("this link is for another approval")]
    OtherApproval,
}

/// Signs a link token for `recipient` on gate `approval_id`, valid until `expires_at` (unix secs).
pub fn mint(
    secret: &SecretString,
    org_id: &str,
    approval_id: &str,
    recipient: &str,
    expires_at: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = LinkClaims {
        sub: recipient.to_owned(),
        approval_id: approval_id.to_owned(),
        org_id: org_id.to_owned(),
        jti: oa_domain::ids::new_id("link"),
        exp: expires_at,
        iat: now,
        aud: AUDIENCE.to_owned(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// Verifies a token presented for gate `approval_id`: signature, expiry (no leeway) and binding.
pub fn verify(secret: &SecretString, token: &str, approval_id: &str) -> Result<LinkClaims, LinkError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<LinkClaims>(
        token,
        &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        &validation,
    )
    .map_err(|error| match error.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => LinkError::Expired,
        _ => LinkError::Invalid,
    })?;
    if data.claims.approval_id != approval_id {
        return Err(LinkError::OtherApproval);
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> SecretString {
        "a-test-secret-of-enough-length".into()
    }

    fn in_an_hour() -> u64 {
        chrono::Utc::now().timestamp() as u64 + 3600
    }

    #[test]
    fn a_link_verifies_for_its_gate_only() {
        let token = mint(&secret(), "org_a", "appr_1", "tech@msp.example", in_an_hour()).unwrap();
        let claims = verify(&secret(), &token, "appr_1").unwrap();
        assert_eq!((claims.sub.as_str(), claims.org_id.as_str()), ("tech@msp.example", "org_a"));
        assert_eq!(verify(&secret(), &token, "appr_2"), Err(LinkError::OtherApproval));
    }

    #[test]
    fn expired_tampered_and_foreign_links_are_refused() {
        let past = chrono::Utc::now().timestamp() as u64 - 5;
        let expired = mint(&secret(), "org_a", "appr_1", "t", past).unwrap();
        assert_eq!(verify(&secret(), &expired, "appr_1"), Err(LinkError::Expired));
        let token = mint(&secret(), "org_a", "appr_1", "t", in_an_hour()).unwrap();
        let other: SecretString = "another-secret-of-enough-length".into();
        assert_eq!(verify(&other, &token, "appr_1"), Err(LinkError::Invalid));
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(verify(&secret(), &tampered, "appr_1"), Err(LinkError::Invalid));
        assert_eq!(verify(&secret(), "not-a-token", "appr_1"), Err(LinkError::Invalid));
    }
}
