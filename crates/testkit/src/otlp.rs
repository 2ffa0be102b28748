//! A real OTLP/gRPC trace receiver (tonic and the `opentelemetry-proto` service) that keeps every
//! span it is sent, for tests that follow one trace across the plane's processes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tokio_util::sync::CancellationToken;

/// One received span, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The trace ids of the span's links.
    pub links: Vec<String>,
    pub resource: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<ReceivedSpan>>>);

fn value_of(value: Option<&AnyValue>) -> serde_json::Value {
    match value {
        Some(AnyValue::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(AnyValue::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(AnyValue::IntValue(i)) => serde_json::Value::from(*i),
        Some(AnyValue::DoubleValue(d)) => serde_json::Value::from(*d),
        Some(other) => serde_json::Value::String(format!("{other:?}")),
        None => serde_json::Value::Null,
    }
}

fn attributes(pairs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|kv| (kv.key.clone(), value_of(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let resource =
                resource_spans.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").and_then(|v| v.as_str()).unwrap_or("").to_owned();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        links: span.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The receiver, serving on a free loopback port until dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    shutdown: CancellationToken,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let store = Store::default();
        let shutdown = CancellationToken::new();
        let (service, stop) = (TraceServiceServer::new(store.clone()), shutdown.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await;
        });
        Ok(Receiver { addr, store, shutdown })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
