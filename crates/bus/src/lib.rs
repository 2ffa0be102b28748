//! The bus: JetStream stream `BUS` on `bus.<org_id>.<source_product>.<event_type>` carrying the
//! event [`Envelope`], and stream `WORK` carrying execution work. Publishers set `Nats-Msg-Id`, so
//! a resent event or work item is dropped by JetStream within the duplicate window.
//!
//! This crate owns subjects and envelopes; it knows nothing of agents or executions.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use oa_domain::ids;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use async_nats;

/// How long JetStream remembers message ids to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach NATS: {0}")]
    Connect(String),
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("cannot encode the envelope: {0}")]
    Encode(#[from] serde_json::Error),
}

fn js_error(error: impl std::fmt::Display) -> BusError {
    BusError::JetStream(error.to_string())
}

/// A product event as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub org_id: String,
    pub source_product: String,
    pub event_type: String,
    #[serde(default)]
    pub client_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

impl Envelope {
    /// A new envelope with a fresh `evt_` id, taking `client_id` from the payload when present.
    pub fn new(org_id: &str, source_product: &str, event_type: &str, payload: Value) -> Envelope {
        let client_id = payload.get("client_id").and_then(Value::as_str).map(str::to_owned);
        Envelope {
            id: ids::new_id("evt"),
            org_id: org_id.to_owned(),
            source_product: source_product.to_owned(),
            event_type: event_type.to_owned(),
            client_id,
            occurred_at: Utc::now(),
            payload,
        }
    }

    /// The id JetStream deduplicates this event by (`Nats-Msg-Id`): `<org_id>:<event id>`. Event
    /// ids are chosen by publishers, so only the pair is unique; a publisher straight to NATS must
    /// use the same form, or its resends are not dropped.
    pub fn dedup_id(&self) -> String {
        dedup_id(&self.org_id, &self.id)
    }

    pub fn event_type_id(&self) -> String {
        format!("{}:{}", self.source_product, self.event_type)
    }
}

/// The dedup id (`Nats-Msg-Id`) of an org's event: two orgs never share one.
pub fn dedup_id(org_id: &str, event_id: &str) -> String {
    format!("{org_id}:{event_id}")
}

/// Subjects and stream names of one plane (tests give each plane its own prefix).
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    pub bus_stream: String,
    pub work_stream: String,
    pub consumer: String,
    pub ack_wait: Duration,
    /// Deliveries of a message before the plane gives it up (dead letter or failed execution).
    pub max_deliveries: u64,
    pub redelivery_delay: Duration,
}

impl Topology {
    pub fn new(config: &oa_config::NatsConfig) -> Topology {
        Topology {
            prefix: config.subject_prefix.clone(),
            bus_stream: config.bus_stream.clone(),
            work_stream: config.work_stream.clone(),
            consumer: config.consumer.clone(),
            ack_wait: Duration::from_secs(config.ack_wait_seconds.max(1)),
            max_deliveries: config.max_deliveries.max(1),
            redelivery_delay: Duration::from_millis(config.redelivery_delay_ms),
        }
    }

    pub fn event_subject(&self, org_id: &str, source_product: &str, event_type: &str) -> String {
        format!("{}bus.{org_id}.{source_product}.{event_type}", self.prefix)
    }

    pub fn bus_wildcard(&self) -> String {
        format!("{}bus.>", self.prefix)
    }

    pub fn work_subject(&self) -> String {
        format!("{}work.executions", self.prefix)
    }

    /// Where the agents service announces that an org's agents changed (`system` for system agents).
    pub fn agents_changed_subject(&self, org_id: &str) -> String {
        format!("{}agents.changed.{org_id}", self.prefix)
    }

    /// Dead letters are announced on `<root>.<org_id>`.
    pub fn dead_letter_subject_root(&self) -> String {
        format!("{}deadletter", self.prefix)
    }

    pub fn agents_changed_wildcard(&self) -> String {
        format!("{}agents.changed.*", self.prefix)
    }

    /// The org named by an event subject, when the subject is one of this plane's.
    pub fn org_of_subject<'s>(&self, subject: &'s str) -> Option<&'s str> {
        subject.strip_prefix(&self.prefix)?.strip_prefix("bus.")?.split('.').next()
    }
}

/// The options every connection of the plane starts from: the server's credentials, if any.
pub fn connect_options(config: &oa_config::NatsConfig) -> async_nats::ConnectOptions {
    use oa_config::secrecy::ExposeSecret;
    match (&config.user, &config.password, &config.token) {
        (Some(user), Some(password), _) => async_nats::ConnectOptions::with_user_and_password(
            user.clone(),
            password.expose_secret().to_owned(),
        ),
        (_, _, Some(token)) => async_nats::ConnectOptions::with_token(token.expose_secret().to_owned()),
        _ => async_nats::ConnectOptions::new(),
    }
}

pub async fn connect(config: &oa_config::NatsConfig) -> Result<async_nats::Client, BusError> {
    connect_options(config)
        .connection_timeout(Duration::from_secs(3))
        .connect(config.url.as_str())
        .await
        .map_err(|e| BusError::Connect(e.to_string()))
}

/// Creates the plane's streams if absent (file storage, a duplicate window for dedup ids).
pub async fn ensure_streams(js: &jetstream::Context, topology: &Topology) -> Result<(), BusError> {
    js.get_or_create_stream(stream::Config {
        name: topology.bus_stream.clone(),
        subjects: vec![topology.bus_wildcard()],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::from_secs(7 * 86_400),
        ..Default::default()
    })
    .await
    .map_err(js_error)?;
    js.get_or_create_stream(stream::Config {
        name: topology.work_stream.clone(),
        subjects: vec![topology.work_subject()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(js_error)?;
    Ok(())
}

/// Publishes an event and waits for JetStream to store it. A duplicate id is acknowledged
/// without being stored twice.
pub async fn publish_event(
    js: &jetstream::Context,
    topology: &Topology,
    envelope: &Envelope,
) -> Result<(), BusError> {
    let subject = topology.event_subject(&envelope.org_id, &envelope.source_product, &envelope.event_type);
    publish_raw(js, subject, &envelope.dedup_id(), serde_json::to_vec(envelope)?.into()).await
}

/// Publishes bytes on a subject under a dedup id (replays of dead letters use it as is).
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: String,
    message_id: &str,
    payload: bytes::Bytes,
) -> Result<(), BusError> {
    let mut publish = jetstream::message::PublishMessage::build().message_id(message_id).payload(payload);
    // W3C trace context travels in NATS headers, so one trace follows an event through the plane.
    if let Some(traceparent) = oa_telemetry::current_traceparent() {
        publish = publish.header("traceparent", traceparent.as_str());
    }
    js.send_publish(subject, publish).await.map_err(js_error)?.await.map_err(js_error)?;
    Ok(())
}

/// Work for the engine: run (or resume) the executions one event started, together. One message
/// per event rather than per execution keeps the bus writes of ingest to two per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    pub org_id: String,
    pub execution_ids: Vec<String>,
}

/// Publishes work under `dedup_id` (the event id for ingest, the execution id for a retry or a
/// scheduled tick), so a republish of the same work is dropped.
pub async fn publish_work(
    js: &jetstream::Context,
    topology: &Topology,
    dedup_id: &str,
    item: &WorkItem,
) -> Result<(), BusError> {
    publish_raw(js, topology.work_subject(), &format!("work_{dedup_id}"), serde_json::to_vec(item)?.into())
        .await
}

/// The trace context a message carries, if any.
pub fn trace_context_of(headers: Option<&async_nats::HeaderMap>) -> Option<oa_telemetry::TraceContext> {
    let traceparent = headers?.get("traceparent")?.as_str().to_owned();
    Some(oa_telemetry::context_from_traceparent(&traceparent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_org_product_and_event_type() {
        let topology =
            Topology::new(&oa_config::NatsConfig { subject_prefix: "t1.".into(), ..Default::default() });
        let subject = topology.event_subject("org_a", "psa", "ticket.created");
        assert_eq!(subject, "t1.bus.org_a.psa.ticket.created");
        assert_eq!(topology.org_of_subject(&subject), Some("org_a"));
        assert_eq!(topology.org_of_subject("other.bus.org_a.psa.x"), None);
    }

    #[test]
    fn an_envelope_takes_its_client_from_the_payload() {
        let envelope =
            Envelope::new("org_a", "psa", "ticket.created", serde_json::json!({"client_id": "cl_1"}));
        assert!(envelope.id.starts_with("evt_"));
        assert_eq!(envelope.client_id.as_deref(), Some("cl_1"));
        assert_eq!(envelope.event_type_id(), "psa:ticket.created");
    }
}
