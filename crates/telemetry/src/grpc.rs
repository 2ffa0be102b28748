//! The gRPC server side: one span per call (a child of the caller's trace, from the
//! `traceparent` in its metadata) and the call metrics, for every service a process serves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;

use crate::metrics;

/// Wraps a tonic server: `Server::builder().layer(GrpcServerLayer)`.
#[derive(Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> GrpcServer<S> {
        GrpcServer { inner }
    }
}

#[derive(Clone)]
pub struct GrpcServer<S> {
    inner: S,
}

/// The role that serves a gRPC service, for the `role` label.
fn role_of(service: &str) -> &'static str {
    match service {
        "Agents" => "agents",
        "Catalog" => "catalog",
        "Executions" => "executions",
        "Approvals" => "approvals",
        "Credits" => "credits",
        "Health" => "health",
        _ => "other",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = metrics::grpc_service_method(request.uri().path());
        let (service, method) = (service.to_owned(), method.to_owned());
        let role = role_of(&service);
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            org_id = tracing::field::Empty,
        );
        if let Some(org_id) = (!span.is_disabled()).then(|| caller_org(request.headers())).flatten() {
            span.record("org_id", org_id.as_str());
        }
        crate::adopt_remote_parent(&span, crate::extract_http(request.headers()));
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(request));
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                // A failed call answers "trailers only", with its status in the headers; a
                // successful one sends it in the trailers, after this layer has seen the response.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => 13,
                };
                recorded.record("rpc.grpc.status_code", code);
                let code_label = code_name(code);
                metrics::counter!(metrics::GRPC_CALLS, "role" => role, "service" => service.clone(),
                    "method" => method.clone(), "code" => code_label)
                .increment(1);
                metrics::histogram!(metrics::GRPC_CALL_DURATION, "role" => role, "service" => service,
                    "method" => method)
                .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// The org of the caller a request carries (`x-oneagents-caller-bin`, written by
/// `oa_auth::service::outgoing`), so the lines a service logs name the org they work for.
fn caller_org(headers: &http::HeaderMap) -> Option<String> {
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let bytes = metadata.get_bin("x-oneagents-caller-bin")?.to_bytes().ok()?;
    let caller: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    caller["org_id"].as_str().map(str::to_owned)
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, ...).
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
