//! Logs and traces for every process of the plane.
//!
//! [`init`] installs a `tracing` subscriber (JSON or pretty logs) with an OpenTelemetry layer; spans
//! are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, but trace ids exist
//! either way so W3C `traceparent` travels through HTTP headers and gRPC metadata
//! ([`inject_http`], [`extract_http`], [`inject_grpc`], [`extract_grpc`]). This crate owns no
//! business logic.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use opentelemetry::Context as TraceContext;

/// Flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(config: &oa_config::TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource =
        opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("one-agents");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(config.log_filter.clone()));
    let logs = if config.log_format == "json" {
        tracing_subscriber::fmt::layer().json().with_current_span(true).boxed()
    } else {
        tracing_subscriber::fmt::layer().compact().boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::header::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Reads a caller's trace context from incoming HTTP headers.
pub fn extract_http(headers: &http::HeaderMap) -> TraceContext {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the current span's context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Reads the caller's trace context from incoming gRPC metadata.
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> TraceContext {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// The current span's W3C `traceparent`, for carriers without a header map type of their own
/// (NATS message headers).
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_http(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The trace context of a `traceparent` value.
pub fn context_from_traceparent(traceparent: &str) -> TraceContext {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        headers.insert("traceparent", value);
    }
    extract_http(&headers)
}

/// Makes `span` a child of the remote context carried by a request.
pub fn adopt_remote_parent(span: &tracing::Span, context: TraceContext) {
    let _ = span.set_parent(context);
}

/// The W3C trace id of the current span, for logs and error reports.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_http_and_grpc_hops() {
        let mut headers = http::HeaderMap::new();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", traceparent.parse().unwrap());
        let context = extract_http(&headers);

        let mut metadata = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(&mut metadata));
        assert_eq!(metadata.get("traceparent").unwrap().to_str().unwrap(), traceparent);

        let back = extract_grpc(&metadata);
        let mut out = http::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&back, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), traceparent);
    }
}
