//! The internal service credential and the caller's identity in gRPC metadata.
//!
//! The gateway resolves the caller once and sends it to services as JSON in the binary metadata
//! entry `x-oneagents-caller-bin`, beside the shared service token `x-oneagents-service-token`.
//! Services install [`ServiceGuard`] as a tonic interceptor: a call without the right token is
//! refused as `unauthenticated`, and the caller is placed in the request's extensions for
//! [`caller_of`].

use anyhow::Context;
use oa_domain::{ApiError, Caller, Principal};
use oa_proto::common::diagnostics_server::DiagnosticsServer;
use oa_proto::common::{WhoAmIRequest, WhoAmIResponse};
use oa_proto::status::to_status;
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
    oa_telemetry::inject_grpc(metadata);
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
            let error = ApiError::new(
                oa_domain::ErrorCode::Unauthorized,
                "This service accepts calls only from the plane",
            );
            return Err(to_status(&error));
        }
        let caller = metadata
            .get_bin(CALLER_KEY)
            .and_then(|v| v.to_bytes().ok())
            .and_then(|bytes| serde_json::from_slice::<Caller>(&bytes).ok())
            .ok_or_else(|| to_status(&ApiError::bad_request("The call carries no caller identity")))?;
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
        .ok_or_else(|| to_status(&ApiError::internal_from("service guard", &"no caller in extensions")))
}

/// A lazily connected channel to a service of the plane.
pub fn channel(endpoint: &str, grpc: &oa_config::GrpcConfig) -> Result<tonic::transport::Channel, ApiError> {
    let tls = endpoint.starts_with("https://");
    let mut endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| ApiError::internal_from("grpc endpoint", &e))?
        .connect_timeout(std::time::Duration::from_millis(grpc.connect_timeout_ms))
        .timeout(std::time::Duration::from_millis(grpc.request_timeout_ms))
        .tcp_nodelay(true);
    if tls {
        let files = grpc
            .tls
            .as_ref()
            .ok_or_else(|| ApiError::internal_from("grpc tls", &"an https:// endpoint needs grpc.tls"))?;
        endpoint = endpoint
            .tls_config(
                client_tls(&files.ca_file)
                    .map_err(|e| ApiError::internal_from("grpc tls", &format!("{e:#}")))?,
            )
            .map_err(|e| ApiError::internal_from("grpc tls", &e))?;
    }
    Ok(endpoint.connect_lazy())
}

/// A TLS client that trusts the CA in `ca_file` (PEM) and nothing else.
pub fn client_tls(ca_file: &std::path::Path) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let ca =
        std::fs::read(ca_file).with_context(|| format!("reading grpc.tls.ca_file {}", ca_file.display()))?;
    Ok(tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca)))
}

/// The TLS identity a role serves gRPC with.
pub fn server_tls(files: &oa_config::GrpcTlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading grpc.tls.{what} {}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&files.cert_file, "cert_file")?,
        read(&files.key_file, "key_file")?,
    );
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}

/// `oneagents.common.v1.Diagnostics`, served by every service: answers with the identity the
/// service received, so an operator can check the gateway-to-service plumbing.
pub struct Diagnostics {
    service: &'static str,
}

impl Diagnostics {
    pub fn new(service: &'static str) -> Self {
        Diagnostics { service }
    }

    /// The Diagnostics service behind a [`ServiceGuard`].
    pub fn guarded(service: &'static str, token: SecretString) -> GuardedDiagnostics {
        DiagnosticsServer::with_interceptor(Diagnostics::new(service), ServiceGuard::new(token))
    }
}

pub type GuardedDiagnostics =
    tonic::service::interceptor::InterceptedService<DiagnosticsServer<Diagnostics>, ServiceGuard>;

#[tonic::async_trait]
impl oa_proto::common::diagnostics_server::Diagnostics for Diagnostics {
    async fn who_am_i(
        &self,
        request: tonic::Request<WhoAmIRequest>,
    ) -> Result<tonic::Response<WhoAmIResponse>, tonic::Status> {
        let caller = caller_of(&request)?;
        let principal_type = caller.principal_kind().as_str().to_owned();
        let (principal_id, role, scopes) = match caller.principal {
            Principal::User { sub, role } => (sub, role.as_str().to_owned(), Vec::new()),
            Principal::IntegrationKey { key_id, scopes } => {
                (key_id, String::new(), scopes.iter().map(|s| s.as_str().to_owned()).collect())
            }
            Principal::Service { name } => (name, String::new(), Vec::new()),
            Principal::Product { key_id, product } => (key_id, product, Vec::new()),
        };
        Ok(tonic::Response::new(WhoAmIResponse {
            service: self.service.to_owned(),
            org_id: caller.org_id,
            principal_type,
            principal_id,
            role,
            scopes,
        }))
    }
}
