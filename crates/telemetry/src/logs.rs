//! JSON log lines: one object per line, never a colour code, and inside a request or an execution
//! the trace and span ids beside the fields of every enclosing span (`span.org_id`,
//! `span.execution_id`, ...), so a line leads to its trace and its tenant.

use json_subscriber::JsonLayer;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// The ids of the span the event is logged in, when there is one.
fn current_ids() -> Option<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

pub(crate) fn json_layer<S>() -> JsonLayer<S, fn() -> std::io::Stdout>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    let mut layer = JsonLayer::stdout();
    layer
        .with_timer("timestamp", tracing_subscriber::fmt::time::SystemTime)
        .with_level("level")
        .with_target("target")
        .with_event("fields")
        .with_flattened_span_fields("span");
    layer.add_dynamic_field("trace_id", |_, _| current_ids().map(|(trace, _)| trace));
    layer.add_dynamic_field("span_id", |_, _| current_ids().map(|(_, span)| span));
    layer
}
