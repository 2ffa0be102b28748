//! The signature on action calls: every call to a product API carries the calling org's id,
//! signed with HMAC-SHA256 under the product's secret over the method, the path, a timestamp, the
//! org and the body's SHA-256. A product checks it before acting, so it knows which org is calling
//! and can refuse a device id of another org; a tampered, replayed-late or unsigned call is refused.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ORG_HEADER: &str = "x-oneagents-org";
pub const ACTION_HEADER: &str = "x-oneagents-action";
pub const TIMESTAMP_HEADER: &str = "x-oneagents-timestamp";
pub const SIGNATURE_HEADER: &str = "x-oneagents-signature";
/// How far a call's timestamp may be from the product's clock.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// What one call's signature covers.
pub struct SignedCall<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub timestamp: i64,
    pub org_id: &'a str,
    pub body: &'a [u8],
}

fn mac(secret: &[u8], call: &SignedCall<'_>) -> Hmac<Sha256> {
    let body_hash = hex::encode(Sha256::digest(call.body));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    let signed =
        format!("v1\n{}\n{}\n{}\n{}\n{body_hash}", call.method, call.path, call.timestamp, call.org_id);
    mac.update(signed.as_bytes());
    mac
}

/// The value of the signature header: `v1=<hex>`.
pub fn sign(secret: &[u8], call: &SignedCall<'_>) -> String {
    format!("v1={}", hex::encode(mac(secret, call).finalize().into_bytes()))
}

/// Why a call's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the call is not signed")]
    Missing,
    #[error("the signature does not match")]
    Mismatch,
    #[error("the call's timestamp is too far from now")]
    Stale,
}

/// Checks a signature header against the call, in constant time, and the timestamp against `now`.
pub fn verify(
    secret: &[u8],
    call: &SignedCall<'_>,
    signature: Option<&str>,
    now: i64,
) -> Result<(), SignatureError> {
    let signature = signature.and_then(|s| s.strip_prefix("v1=")).ok_or(SignatureError::Missing)?;
    let bytes = hex::decode(signature).map_err(|_| SignatureError::Mismatch)?;
    mac(secret, call).verify_slice(&bytes).map_err(|_| SignatureError::Mismatch)?;
    if (now - call.timestamp).abs() > MAX_SKEW_SECONDS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_the_call_it_was_made_for() {
        let call = SignedCall {
            method: "POST",
            path: "/devices/isolate",
            timestamp: 1_000,
            org_id: "org_a",
            body: b"{}",
        };
        let signature = sign(b"secret", &call);
        assert_eq!(verify(b"secret", &call, Some(&signature), 1_010), Ok(()));
        assert_eq!(verify(b"other", &call, Some(&signature), 1_010), Err(SignatureError::Mismatch));
        let other_org = SignedCall { org_id: "org_b", ..call };
        assert_eq!(verify(b"secret", &other_org, Some(&signature), 1_010), Err(SignatureError::Mismatch));
        let call = SignedCall { org_id: "org_a", ..other_org };
        let other_body = SignedCall { body: b"{\"device_id\":\"x\"}", ..call };
        assert_eq!(verify(b"secret", &other_body, Some(&signature), 1_010), Err(SignatureError::Mismatch));
        let call = SignedCall { body: b"{}", ..other_body };
        assert_eq!(verify(b"secret", &call, Some(&signature), 2_000), Err(SignatureError::Stale));
        assert_eq!(verify(b"secret", &call, None, 1_010), Err(SignatureError::Missing));
    }
}
