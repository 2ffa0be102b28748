//! The internal service credential and the caller's identity in gRPC metadata.
//!
//! The gateway resolves the caller once and sends it to services as JSON in the binary metadata
//! entry `x-oneagents-caller-bin`, beside the shared service token `x-oneagents-service-token`.
//! Services install [`ServiceGuard`] as a tonic interceptor: a call without the right token is
//! refused as `unauthenticated`, and the caller is placed in the request's extensions for
//! [`caller_of`].

use oa_domain::{ApiError, Caller};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;

pub const SERVICE_TOKEN_KEY: &str = "x-oneagents-service-token";
pub const CALLER_KEY: &str = "x-oneagents-caller-bin";

/// Attaches the service token, the caller and the current trace context to an outgoing request.
pub fn outgoing<T>(message: T, caller: &Caller, token: &SecretString) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(token.expose_secret()) {
        metadata.insert(SERVICE_TOKEN_KEY, value);
    }
    let caller_json = serde_json::to_vec(caller).unwrap_or_default();
    metadata.insert_bin(CALLER_KEY, MetadataValue::from_bytes(&caller_json));
    request
}

/// A tonic interceptor that admits only calls carrying the service token and a caller.
#[derive(Clone)]
pub struct ServiceGuard {
    token: SecretString,
}

impl ServiceGuard {
    pub fn new(token: SecretString) -> Self {
        ServiceGuard { token }
    }

    fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, tonic::Status> {
        let presented = metadata.get(SERVICE_TOKEN_KEY).map(|v| v.as_bytes()).unwrap_or_default();
        let expected = self.token.expose_secret().as_bytes();
        if !bool::from(presented.ct_eq(expected)) {
            return Err(ApiError::new(
                oa_domain::ErrorCode::Unauthorized,
                "This service accepts calls only from the plane",
            )
            .to_status());
        }
        let caller = metadata
            .get_bin(CALLER_KEY)
            .and_then(|v| v.to_bytes().ok())
            .and_then(|bytes| serde_json::from_slice::<Caller>(&bytes).ok())
            .ok_or_else(|| ApiError::bad_request("The call carries no caller identity").to_status())?;
        Ok(caller)
    }
}

impl tonic::service::Interceptor for ServiceGuard {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let caller = self.check(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller a [`ServiceGuard`] admitted.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::internal_from("service guard", &"no caller in extensions").to_status())
}
