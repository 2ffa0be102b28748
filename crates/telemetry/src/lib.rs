//! Logs and traces for every process of the plane.
//!
//! [`init`] installs a `tracing` subscriber (JSON or pretty logs) with an OpenTelemetry layer; spans
//! are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, but trace ids exist
//! either way so W3C `traceparent` travels through HTTP headers and gRPC metadata
//! ([`inject_http`], [`extract_http`], [`inject_grpc`], [`extract_grpc`]). This crate owns no
//! business logic.

pub mod grpc;
mod logs;
pub mod metrics;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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

/// The `service.name` of a process: `<service_name>-<role>` for one role, `<service_name>` for
/// several (`all`, or roles joined by `+`).
pub fn service_name(config: &oa_config::TelemetryConfig, role: &str) -> String {
    if role == "all" || role.contains('+') {
        config.service_name.clone()
    } else {
        format!("{}-{role}", config.service_name)
    }
}

/// Installs the global subscriber. Call once, from `main`.
///
/// Spans are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the protocol of
/// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`); headers come from
/// `OTEL_EXPORTER_OTLP_HEADERS` and the sampler from `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG` (parent-based, always on, by default).
pub fn init(
    config: &oa_config::TelemetryConfig,
    role: &str,
    environment: &str,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let environment =
        if config.deployment_environment.is_empty() { environment } else { &config.deployment_environment };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name(config, role))
        .with_attributes([
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            opentelemetry::KeyValue::new("deployment.environment", environment.to_owned()),
            opentelemetry::KeyValue::new("oneagents.role", role.to_owned()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let configured = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if configured("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .is_some()
    {
        let protocol = configured("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| configured("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".to_owned());
        let exporter = match protocol.as_str() {
            "grpc" => opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?,
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder().with_http().build()?,
            other => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: this build speaks grpc and http/protobuf"
            ),
        };
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer("one-agents");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = log_filter(&std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_filter.clone()));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let json = match config.log_format.as_str() {
        "json" => true,
        "pretty" => false,
        _ => !terminal,
    };
    let logs = if json {
        logs::json_layer().boxed()
    } else {
        tracing_subscriber::fmt::layer().compact().with_ansi(terminal).boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(
            // No busy/idle timings, thread attributes or OpenTelemetry context activation on each
            // enter and exit of a span (every poll of an instrumented future): nothing here reads
            // `opentelemetry::Context::current()`, and they cost the ingest path per poll.
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_context_activation(false),
        )
        .with(logs)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The level filter of `directives` (`RUST_LOG` syntax). Directives by target and level alone
/// become a [`Targets`] filter, decided once per callsite; only span or field directives
/// (`[span{field=value}]`) need an [`EnvFilter`], which takes a lock on every enter and exit.
fn log_filter(directives: &str) -> Box<dyn Layer<Registry> + Send + Sync> {
    if !directives.contains('[')
        && let Ok(targets) = directives.replace(' ', "").parse::<Targets>()
    {
        return targets.boxed();
    }
    EnvFilter::new(directives).boxed()
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

/// A client span for an outgoing HTTP call to `host`, and the headers (`traceparent`) that make
/// the callee's work part of the same trace. Send the request inside the span.
pub fn outgoing_http(method: &'static str, host: &str) -> (tracing::Span, http::HeaderMap) {
    let span = tracing::info_span!(
        "http_client",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = %host,
        http.response.status_code = tracing::field::Empty,
    );
    let mut headers = http::HeaderMap::new();
    span.in_scope(|| inject_http(&mut headers));
    (span, headers)
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

/// Makes `span` a child of the span `traceparent` names, and links it to the trace it would
/// otherwise have joined (the current span's): a run resumed by someone else's request stays in
/// the trace of the work it continues, and still leads to that request.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt;
    let current = tracing::Span::current().context();
    let parent = context_from_traceparent(traceparent);
    let (incoming, stored) = (current.span().span_context().clone(), parent.span().span_context().clone());
    if !stored.is_valid() {
        return;
    }
    let _ = span.set_parent(parent);
    if incoming.is_valid() && incoming.trace_id() != stored.trace_id() {
        span.add_link(incoming);
    }
}

/// Whether the current span's trace is sampled, that is, exported.
pub fn current_is_sampled() -> bool {
    use opentelemetry::trace::TraceContextExt;
    tracing::Span::current().context().span().span_context().is_sampled()
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

    /// Counts the events that reach it (after the filter below it).
    #[derive(Clone, Default)]
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn passed(directives: &str, emit: impl FnOnce()) -> usize {
        let count = Count::default();
        let subscriber = tracing_subscriber::registry().with(log_filter(directives)).with(count.clone());
        tracing::subscriber::with_default(subscriber, emit);
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn the_log_filter_reads_targets_levels_and_span_directives() {
        let by_target = passed("info, noisy=warn", || {
            tracing::info!(target: "noisy", "dropped");
            tracing::warn!(target: "noisy", "kept");
            tracing::info!(target: "calm", "kept");
            tracing::debug!(target: "calm", "dropped");
        });
        assert_eq!(by_target, 2);
        let by_span = passed("warn,[job]=debug", || {
            tracing::debug!("dropped: outside the span");
            tracing::info_span!("job").in_scope(|| tracing::debug!("kept: inside the span"));
        });
        assert_eq!(by_span, 1);
        assert_eq!(passed("off", || tracing::error!("dropped")), 0);
    }
}
