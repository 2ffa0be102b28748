//! The worker: consumes product events from the `BUS` stream, matches them against each org's
//! active agents (an in-memory index), creates one execution per (event, agent) in Postgres,
//! publishes the work, and acks the event only then. It also consumes the `WORK` stream and runs
//! executions step by step.
//!
//! It writes schema `executions` through `oa_executions::store` as the engine of that context,
//! asks the agents and catalog services for what it needs, and touches no other schema.

mod dead_letters;
mod delivery;
pub mod dispatch;
pub mod egress;
pub mod engine;
pub mod index;
mod intake;
pub mod matching;
pub mod providers;
pub mod scheduler;
pub mod sweeper;

use oa_domain::ids::{EventId, ExecutionId, OrgId};
use oa_telemetry::metrics;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use oa_bus::async_nats::jetstream::{self, AckKind, consumer::pull};
use oa_bus::{Envelope, Topology, WorkItem};
use oa_domain::{Caller, ids};
use oa_executions::store;
use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::catalog::catalog_client::CatalogClient;
use oa_store::begin_org;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::engine::Engine;
use crate::index::AgentIndex;

const CATALOG_TTL: Duration = Duration::from_secs(30);
/// After an org's dead letter is logged at warn, its next ones for this long are logged at debug:
/// a flood of poison events must not flood the logs too (the metric counts every one).
const DEAD_LETTER_LOG_QUIET: Duration = Duration::from_secs(10);

struct Ingest {
    pool: PgPool,
    topology: Topology,
    index: Arc<AgentIndex>,
    catalog: CatalogClient<Channel>,
    token: SecretString,
    /// Event types the catalog has, for [`CATALOG_TTL`].
    known_event_types: moka::future::Cache<String, ()>,
    nats: oa_bus::async_nats::Client,
    dead_letters: dead_letters::DeadLetters,
    /// Orgs whose dead letter was logged at warn in the last [`DEAD_LETTER_LOG_QUIET`].
    dead_letters_logged: moka::sync::Cache<String, ()>,
    /// Renders flow-control keys.
    templates: Arc<engine::Templates>,
    /// Wakes the dispatcher when work was queued.
    wake: Arc<tokio::sync::Notify>,
}

/// What handling one bus message came to.
enum Handled {
    Executions(usize),
    DeadLettered,
}

/// A bus message checked and matched: what is left is to write it, alone or in a batch.
enum Prepared {
    Handled(Handled),
    Write(EventWrite),
}

/// An event's executions and their work, ready to be written in the event's org.
struct EventWrite {
    org_id: String,
    event_id: String,
    trigger_event: serde_json::Value,
    candidates: Arc<Vec<matching::Candidate>>,
    /// Indexes into `candidates` of the agents that matched.
    matched: Vec<usize>,
    execution_ids: Vec<String>,
    /// Each execution's span, when the trace is sampled.
    execution_traceparents: Vec<Option<String>>,
    /// Each new execution's work (a redelivered event's executions are queued as they are).
    work: Vec<store::dispatch::Runnable>,
    /// The event's trace context: the runs continue it.
    traceparent: Option<String>,
}

/// What writing an event did.
struct Written {
    inserted: usize,
    fresh: bool,
}

impl Ingest {
    async fn event_type_known(&self, org_id: &str, id: &str) -> anyhow::Result<bool> {
        if self.known_event_types.contains_key(id) {
            return Ok(true);
        }
        let caller = Caller::service("worker", org_id);
        let found =
            oa_clients::catalog::fetch_event_type(&mut self.catalog.clone(), &caller, &self.token, id)
                .await
                .map_err(|e| delivery::Unavailable::new("catalog", e))?;
        if found.is_some() {
            self.known_event_types.insert(id.to_owned(), ()).await;
        }
        Ok(found.is_some())
    }

    async fn dead_letter(
        &self,
        org_id: &str,
        subject: &str,
        sequence: u64,
        event_id: Option<&str>,
        payload: &[u8],
        (kind, reason): (&'static str, String),
    ) -> anyhow::Result<Handled> {
        if self.dead_letters_logged.contains_key(org_id) {
            tracing::debug!(org_id, subject, %reason, "event dead-lettered");
        } else {
            self.dead_letters_logged.insert(org_id.to_owned(), ());
            tracing::warn!(
                org_id,
                subject,
                %reason,
                quiet_seconds = DEAD_LETTER_LOG_QUIET.as_secs(),
                "event dead-lettered (this org's next dead letters for quiet_seconds are logged at debug; oneagents_events_dead_lettered_total counts all)"
            );
        }
        metrics::counter!(metrics::EVENTS_DEAD_LETTERED, "role" => "worker", "reason" => kind).increment(1);
        // Postgres text holds no NUL: the letter keeps everything else of what arrived.
        let storable = |text: &str| text.replace('\0', "\u{FFFD}");
        let reason = storable(&reason);
        let letter = store::DeadLetter {
            id: format!("dlq_{}_{sequence}", self.topology.bus_stream),
            org_id: org_id.to_owned(),
            subject: subject.to_owned(),
            event_id: event_id.map(storable),
            payload: storable(&String::from_utf8_lossy(payload)),
            reason: reason.clone(),
            created_at: chrono::Utc::now(),
            replayed_at: None,
        };
        let notice = serde_json::json!({"id": letter.id, "subject": subject, "reason": reason});
        self.dead_letters.store(letter).await?;
        // Observers may follow dead letters live on this subject; the table is the record.
        let _ = self
            .nats
            .publish(
                format!("{}.{org_id}", self.topology.dead_letter_subject_root()),
                notice.to_string().into(),
            )
            .await;
        Ok(Handled::DeadLettered)
    }

    /// Handles one bus message in a transaction of its own.
    async fn handle(&self, message: &jetstream::Message) -> anyhow::Result<Handled> {
        let write = match self.prepare(message).await? {
            Prepared::Handled(handled) => return Ok(handled),
            Prepared::Write(write) => write,
        };
        let mut tx = begin_org(&self.pool, &write.org_id).await?;
        let written = self.write(&mut tx, &write).await?;
        tx.commit().await?;
        self.written(&written);
        Ok(Handled::Executions(write.matched.len()))
    }

    /// Checks a bus message, dead-letters it when it cannot run, and matches it.
    async fn prepare(&self, message: &jetstream::Message) -> anyhow::Result<Prepared> {
        metrics::counter!(metrics::EVENTS_RECEIVED, "role" => "worker").increment(1);
        let subject = message.subject.as_str();
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        let Some(org_id) = self.topology.org_of_subject(subject).filter(|o| ids::is_valid_org_id(o)) else {
            tracing::warn!(subject, "an event on a subject with no org; dropped");
            return Ok(Prepared::Handled(Handled::DeadLettered));
        };
        if let Some(org) = metrics::org_label(org_id) {
            metrics::counter!(metrics::ORG_EVENTS_RECEIVED, "role" => "worker", "org_id" => org).increment(1);
        }
        let envelope: Envelope = match serde_json::from_slice(&message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                return self
                    .dead_letter(
                        org_id,
                        subject,
                        sequence,
                        None,
                        &message.payload,
                        ("malformed_envelope", format!("not a valid event envelope: {error}")),
                    )
                    .await
                    .map(Prepared::Handled);
            }
        };
        let expected =
            self.topology.event_subject(&envelope.org_id, &envelope.source_product, &envelope.event_type);
        if envelope.org_id != org_id || expected != subject || !envelope.payload.is_object() {
            let reason = "the envelope's org, product or event type does not match its subject, or its payload is not an object";
            return self
                .dead_letter(
                    org_id,
                    subject,
                    sequence,
                    Some(&envelope.id),
                    &message.payload,
                    ("subject_mismatch", reason.into()),
                )
                .await
                .map(Prepared::Handled);
        }
        if let Some(reason) = unstorable(&envelope) {
            return self
                .dead_letter(
                    org_id,
                    subject,
                    sequence,
                    Some(&envelope.id),
                    &message.payload,
                    ("unstorable", reason),
                )
                .await
                .map(Prepared::Handled);
        }
        if !self.event_type_known(org_id, &envelope.event_type_id()).await? {
            let reason = format!("event type {} is not in the event catalog", envelope.event_type_id());
            return self
                .dead_letter(
                    org_id,
                    subject,
                    sequence,
                    Some(&envelope.id),
                    &message.payload,
                    ("unknown_event_type", reason),
                )
                .await
                .map(Prepared::Handled);
        }
        let candidates =
            self.index.candidates(org_id).await.map_err(|e| delivery::Unavailable::new("agents", e))?;
        let matched = match matching::select(&candidates, &envelope) {
            Ok(matched) => matched,
            Err(unmatchable) => {
                return self
                    .dead_letter(
                        org_id,
                        subject,
                        sequence,
                        Some(&envelope.id),
                        &message.payload,
                        ("unmatchable", unmatchable.0),
                    )
                    .await
                    .map(Prepared::Handled);
            }
        };
        if matched.is_empty() {
            return Ok(Prepared::Handled(Handled::Executions(0)));
        }
        let trigger_event = serde_json::to_value(&envelope)?;
        let execution_ids: Vec<String> =
            matched.iter().map(|_| ExecutionId::generate().into_string()).collect();
        // A trace the sampler dropped gets no span per execution and stores no traceparent; the
        // runs still carry the event's trace id in their logs.
        let sampled = oa_telemetry::current_is_sampled();
        let execution_traceparents = matched
            .iter()
            .zip(&execution_ids)
            .map(|(candidate, id)| {
                sampled.then(|| execution_span(org_id, &candidate.id, candidate.version, id)).flatten()
            })
            .collect();
        let traceparent = oa_telemetry::current_traceparent();
        let mut work = Vec::with_capacity(matched.len());
        for (candidate, id) in matched.iter().zip(&execution_ids) {
            let mut runnable = self.runnable(candidate, id, sequence, &trigger_event).await;
            runnable.traceparent = traceparent.clone();
            work.push(runnable);
        }
        let matched = matched
            .iter()
            .map(|m| candidates.iter().position(|c| std::ptr::eq(c, *m)).unwrap_or_default())
            .collect();
        Ok(Prepared::Write(EventWrite {
            org_id: org_id.to_owned(),
            event_id: envelope.id,
            trigger_event,
            candidates,
            matched,
            execution_ids,
            execution_traceparents,
            work,
            traceparent,
        }))
    }

    /// Writes an event's executions and queues their work, in `tx` (scoped to the event's org).
    async fn write(&self, tx: &mut sqlx::PgConnection, write: &EventWrite) -> anyhow::Result<Written> {
        let org_id = write.org_id.as_str();
        let news: Vec<store::EventExecution> = write
            .matched
            .iter()
            .zip(&write.execution_ids)
            .zip(&write.execution_traceparents)
            .map(|((index, id), traceparent)| {
                let candidate = &write.candidates[*index];
                store::EventExecution {
                    id,
                    agent_id: &candidate.id,
                    agent_version: candidate.version,
                    definition: &candidate.definition,
                    definition_json: &candidate.definition_json,
                    traceparent: traceparent.clone(),
                }
            })
            .collect();
        let (org, event) = (OrgId::from(org_id), EventId::from(write.event_id.as_str()));
        let inserted = store::insert_for_event(tx, &org, &event, &write.trigger_event, &news).await?;
        // On a first delivery every execution is new. On a redelivery some or all exist already:
        // every one still unfinished is queued again (a queued one stays as it is).
        let fresh = inserted.len() == news.len();
        if fresh {
            let mut runnable = Vec::with_capacity(write.work.len());
            for work in &write.work {
                // A debounced execution superseded at once (a later event of its key came first)
                // is recorded as such and not queued.
                if let Some((key, _)) = &work.debounce
                    && store::dispatch::debounce(tx, org_id, work, key).await?.is_some()
                {
                    continue;
                }
                runnable.push(work.clone());
            }
            store::dispatch::enqueue(tx, org_id, &runnable).await?;
        } else {
            let agent_ids: Vec<&str> =
                write.matched.iter().map(|i| write.candidates[*i].id.as_str()).collect();
            let unfinished = store::unfinished_for_event(tx, &org, &event, &agent_ids).await?;
            store::dispatch::enqueue_existing(tx, org_id, &unfinished, write.traceparent.as_deref()).await?;
        }
        Ok(Written { inserted: inserted.len(), fresh })
    }

    /// Counts what a committed write did and wakes the dispatcher.
    fn written(&self, written: &Written) {
        if written.inserted > 0 {
            metrics::counter!(metrics::EVENTS_MATCHED, "role" => "worker").increment(1);
            metrics::counter!(metrics::EXECUTIONS_CREATED, "role" => "worker")
                .increment(written.inserted as u64);
            metrics::histogram!(metrics::INGEST_BATCH, "role" => "worker").record(written.inserted as f64);
        }
        if !written.fresh {
            metrics::counter!(metrics::EVENTS_DUPLICATE, "role" => "worker").increment(1);
        }
        self.wake.notify_one();
    }

    /// Handles messages that arrived together: each is checked and matched side by side, and the
    /// events to write are written in one transaction, then acked. A message that failed before
    /// (a redelivery), or that fails here, or whose batch fails, is settled on its own the usual
    /// way (`delivery::settle`).
    async fn handle_batch(
        &self,
        messages: Vec<jetstream::Message>,
        topology: &Topology,
        stop: &CancellationToken,
        hand_back: &CancellationToken,
    ) {
        let spans: Vec<tracing::Span> = messages.iter().map(bus_event_span).collect();
        let first_delivery = |m: &jetstream::Message| m.info().map(|i| i.delivered <= 1).unwrap_or(true);
        let prepared =
            futures::future::join_all(messages.iter().zip(&spans).map(|(message, span)| async move {
                if !first_delivery(message) {
                    return None;
                }
                self.prepare(message).instrument(span.clone()).await.ok()
            }))
            .await;
        let mut settled = vec![false; messages.len()];
        let mut writes = Vec::new();
        for (index, prepared) in prepared.into_iter().enumerate() {
            match prepared {
                Some(Prepared::Handled(handled)) => {
                    if let Handled::Executions(count) = handled {
                        spans[index].in_scope(|| tracing::debug!(count, "event matched"));
                    }
                    settled[index] = true;
                }
                Some(Prepared::Write(write)) => writes.push((index, write)),
                None => {}
            }
        }
        if !writes.is_empty() {
            match self.write_all(&writes).await {
                Ok(written) => {
                    for ((index, write), written) in writes.iter().zip(written) {
                        settled[*index] = true;
                        self.written(&written);
                        spans[*index]
                            .in_scope(|| tracing::debug!(count = write.matched.len(), "event matched"));
                    }
                }
                Err(error) => {
                    tracing::debug!(error = %format!("{error:#}"), events = writes.len(), "a batch failed; its events are written one by one")
                }
            }
        }
        let acks =
            messages.iter().zip(&settled).filter(|(_, settled)| **settled).map(|(m, _)| m.double_ack());
        futures::future::join_all(acks).await;
        let rest = messages
            .iter()
            .zip(spans)
            .zip(&settled)
            .filter(|(_, settled)| !**settled)
            .map(|((message, span), _)| self.settle_one(message, topology, stop, hand_back, span));
        futures::future::join_all(rest).await;
    }

    /// Writes events of several orgs in one transaction, each under its own org's scope.
    async fn write_all(&self, writes: &[(usize, EventWrite)]) -> anyhow::Result<Vec<Written>> {
        let mut tx = self.pool.begin().await?;
        let mut written = Vec::with_capacity(writes.len());
        for (_, write) in writes {
            oa_store::switch_org(&mut tx, &write.org_id).await?;
            written.push(self.write(&mut tx, write).await?);
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Handles one message in a transaction of its own, retried and given up by the delivery
    /// rules; handed back at the end of a drain's grace.
    async fn settle_one(
        &self,
        message: &jetstream::Message,
        topology: &Topology,
        stop: &CancellationToken,
        hand_back: &CancellationToken,
        span: tracing::Span,
    ) {
        let handle = || async {
            if let Handled::Executions(count) = self.handle(message).await? {
                tracing::debug!(count, "event matched");
            }
            Ok(())
        };
        let give_up = |reason: String| self.give_up(message, reason);
        let settled = delivery::settle(message, topology, stop, handle, give_up);
        tokio::select! {
            () = settled.instrument(span) => {}
            () = hand_back.cancelled() => delivery::hand_back(message).await,
        }
    }
}

/// The span of one bus event, a child of the publisher's when the message carries its context.
fn bus_event_span(message: &jetstream::Message) -> tracing::Span {
    let span = tracing::info_span!("bus_event", subject = %message.subject);
    if let Some(context) = oa_bus::trace_context_of(message.headers.as_ref()) {
        oa_telemetry::adopt_remote_parent(&span, context);
    }
    span
}

/// Ingest batches written side by side.
const INGEST_PIPELINES: usize = 4;

impl Ingest {
    /// The work of a new execution: its agent's priority, and its flow-control keys rendered from
    /// the event (a key that cannot be rendered is empty: such executions share one key).
    async fn runnable(
        &self,
        candidate: &matching::Candidate,
        id: &str,
        sequence: u64,
        trigger_event: &serde_json::Value,
    ) -> store::dispatch::Runnable {
        let definition = &candidate.definition;
        let flow = definition.concurrency.is_some()
            || definition.debounce.is_some()
            || definition.throttle.is_some();
        let context = if flow { engine::base_context(trigger_event) } else { serde_json::Value::Null };
        let period = |text: &str| oa_domain::agent::parse_duration_millis(text).unwrap_or(1_000) as i64;
        let mut work = store::dispatch::Runnable {
            execution_id: id.to_owned(),
            agent_id: candidate.id.clone(),
            priority: definition.priority.rank(),
            event_seq: i64::try_from(sequence).ok(),
            ..Default::default()
        };
        if let Some(rule) = &definition.concurrency {
            work.concurrency =
                Some((self.flow_key(&rule.key, &context).await, rule.limit.clamp(1, i32::MAX as u32) as i32));
        }
        if let Some(rule) = &definition.debounce {
            work.debounce = Some((self.flow_key(&rule.key, &context).await, period(&rule.period)));
        }
        if let Some(rule) = &definition.throttle {
            work.throttle = Some((
                self.flow_key(&rule.key, &context).await,
                rule.limit.clamp(1, i32::MAX as u32) as i32,
                period(&rule.period),
            ));
        }
        work
    }

    async fn flow_key(&self, template: &str, context: &serde_json::Value) -> String {
        self.templates.render(template, context).await.unwrap_or_else(|error| {
            tracing::debug!(?error, template, "a flow-control key did not render; it is empty");
            String::new()
        })
    }
}

/// Opens and closes the span of a new execution, a child of the event's ingest span, and returns
/// its traceparent: the execution's runs, however many and wherever they happen, are its children.
fn execution_span(org_id: &str, agent_id: &str, agent_version: i32, execution_id: &str) -> Option<String> {
    let span = tracing::info_span!("execution", org_id, agent_id, agent_version, execution_id);
    span.in_scope(oa_telemetry::current_traceparent)
}

/// Longest event id the plane stores (ids are chosen by publishers).
const MAX_EVENT_ID_LEN: usize = 128;

/// Why an envelope can never be stored, if it cannot: such an event is dead-lettered at once
/// rather than retried. The gateway refuses the same input with 400; this guards the bus.
fn unstorable(envelope: &Envelope) -> Option<String> {
    if envelope.id.is_empty() || envelope.id.len() > MAX_EVENT_ID_LEN {
        return Some(format!("the event id must have 1 to {MAX_EVENT_ID_LEN} characters"));
    }
    // Checked field by field: serializing every envelope to look for a NUL would cost each event.
    let fields = [
        ("id", Some(envelope.id.as_str())),
        ("org_id", Some(envelope.org_id.as_str())),
        ("source_product", Some(envelope.source_product.as_str())),
        ("event_type", Some(envelope.event_type.as_str())),
        ("client_id", envelope.client_id.as_deref()),
    ];
    let path = fields
        .iter()
        .find(|(_, text)| text.is_some_and(|t| t.contains('\0')))
        .map(|(name, _)| (*name).to_owned())
        .or_else(|| oa_domain::hostile::find_nul(&envelope.payload, "payload"))?;
    Some(format!("the event holds a NUL character (\\u0000) at {path}, which cannot be stored"))
}

impl Ingest {
    /// Dead-letters a message the worker gives up on, with `reason`.
    async fn give_up(&self, message: &jetstream::Message, reason: String) -> anyhow::Result<()> {
        let subject = message.subject.as_str();
        let Some(org_id) = self.topology.org_of_subject(subject).filter(|o| ids::is_valid_org_id(o)) else {
            return Ok(());
        };
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        let event_id = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned));
        self.dead_letter(
            org_id,
            subject,
            sequence,
            event_id.as_deref(),
            &message.payload,
            ("given_up", reason),
        )
        .await?;
        Ok(())
    }
}

pub struct WorkerConfig {
    pub pool: PgPool,
    pub nats: oa_bus::async_nats::Client,
    pub config: oa_config::Config,
    /// Told `true` once the worker consumes both streams, `false` when it stops or drains: the
    /// worker's readiness.
    pub ready: tokio::sync::watch::Sender<bool>,
}

fn channel(config: &oa_config::Config, service: &str) -> anyhow::Result<Channel> {
    oa_auth::service::channel(config.endpoint(service)?, &config.grpc)
        .map_err(|e| anyhow::anyhow!("{service}: {e}"))
}

/// Runs the ingest and work loops until `shutdown`, then drains: it stops pulling, lets the
/// messages in hand finish, and hands back (naks) those still running when
/// [`oa_config::ShutdownConfig::hand_back_after`] has passed, so another replica resumes them at
/// once. The engine's once-only records make a resumed step safe: a side effect that was done is
/// not done again.
pub async fn run(worker: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ready = worker.ready.clone();
    let result = consume(worker, shutdown).await;
    ready.send_replace(false);
    result
}

async fn consume(worker: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = &worker.config;
    let topology = Topology::new(&config.nats);
    let jetstream = jetstream::new(worker.nats.clone());
    oa_bus::ensure_streams(&jetstream, &topology).await?;
    let agents = AgentsClient::new(channel(config, "agents")?);
    let index = Arc::new(AgentIndex::new(agents.clone(), config.grpc.service_token.clone()));
    let templates = Arc::new(engine::Templates::new(
        oa_template::isolated::IsolatedRenderer::new(
            config.limits.template_memory_bytes,
            config.limits.template_renderers,
        ),
        config.limits.max_rendered_bytes,
    ));
    let wake = Arc::new(tokio::sync::Notify::new());
    let ingest = Arc::new(Ingest {
        pool: worker.pool.clone(),
        topology: topology.clone(),
        index: index.clone(),
        catalog: CatalogClient::new(channel(config, "catalog")?),
        token: config.grpc.service_token.clone(),
        known_event_types: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(CATALOG_TTL)
            .build(),
        nats: worker.nats.clone(),
        dead_letters: dead_letters::DeadLetters::start(worker.pool.clone()),
        dead_letters_logged: moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(DEAD_LETTER_LOG_QUIET)
            .build(),
        templates: templates.clone(),
        wake: wake.clone(),
    });
    let engine = Arc::new(Engine {
        pool: worker.pool.clone(),
        llm: providers::Llm::new(config.llm.clone()),
        outbound: providers::Outbound::new(config, egress::Egress::new(egress::Policy::from_config(config))),
        prices: config.credits.prices.clone(),
        agents,
        credits: oa_proto::credits::credits_client::CreditsClient::new(channel(config, "credits")?),
        approvals: oa_proto::approvals::approvals_client::ApprovalsClient::new(channel(config, "approvals")?),
        token: config.grpc.service_token.clone(),
        limits: config.limits.clone(),
        index,
        templates,
        run_stats: Arc::new(engine::run_stats::RunStats::default()),
    });
    let stats_stop = CancellationToken::new();
    let sending_stats = {
        let (stats, agents, token) =
            (engine.run_stats.clone(), engine.agents.clone(), config.grpc.service_token.clone());
        tokio::spawn({
            let stop = stats_stop.clone();
            async move { stats.run(agents, token, stop).await }
        })
    };

    // Agents changes drop the affected org's index.
    let mut changes = worker.nats.subscribe(topology.agents_changed_wildcard()).await?;
    let invalidating = ingest.clone();
    let prefix = topology.agents_changed_subject("");
    let stop = shutdown.clone();
    let invalidations = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                message = changes.next() => match message {
                    Some(message) => {
                        if let Some(org_id) = message.subject.as_str().strip_prefix(&prefix) {
                            invalidating.index.invalidate(org_id).await;
                        }
                    }
                    None => return,
                },
            }
        }
    });

    let scheduler = scheduler::Scheduler {
        pool: worker.pool.clone(),
        agents: engine.agents.clone(),
        token: config.grpc.service_token.clone(),
        jetstream: jetstream.clone(),
        topology: topology.clone(),
    };
    let mut scheduling = tokio::spawn(scheduler.run(shutdown.clone()));
    let sweeper = sweeper::Sweeper {
        pool: worker.pool.clone(),
        credits: engine.credits.clone(),
        token: config.grpc.service_token.clone(),
        ttl: Duration::from_secs(config.credits.reservation_ttl_seconds.max(1)),
    };
    let mut sweeping = tokio::spawn(sweeper.run(shutdown.clone()));

    let chunk = config.nats.event_concurrency.clamp(1, 256);
    let bounds = intake::Bounds { messages: config.nats.intake_events, bytes: config.nats.intake_bytes };
    // The bus consumer lets a worker hold its intake and the batches in hand, unacknowledged.
    let bus_pending = bounds.messages.saturating_add(chunk * INGEST_PIPELINES).max(10_000);
    let consumer_config = |stream: &str, subject: String, max_ack_pending: usize| pull::Config {
        durable_name: Some(format!("{}_{stream}", topology.consumer)),
        filter_subject: subject,
        ack_wait: topology.ack_wait,
        max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
        // The last guard: the worker gives a message up after `max_deliveries` itself (it must
        // record the dead letter first); the server stops a little later, whatever happens.
        max_deliver: i64::try_from(topology.max_deliveries + 2).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let events = jetstream
        .get_stream(&topology.bus_stream)
        .await
        .context("the bus stream")?
        .get_or_create_consumer(
            &format!("{}_bus", topology.consumer),
            consumer_config("bus", topology.bus_wildcard(), bus_pending),
        )
        .await
        .context("the bus consumer")?;
    let work = jetstream
        .get_stream(&topology.work_stream)
        .await
        .context("the work stream")?
        .get_or_create_consumer(
            &format!("{}_work", topology.consumer),
            consumer_config("work", topology.work_subject(), 10_000),
        )
        .await
        .context("the work consumer")?;
    let (events_watch, work_watch) = (events.clone(), work.clone());

    // At the end of the grace, what is still in hand goes back to the bus.
    let hand_back = CancellationToken::new();
    let hand_back_after = config.shutdown.hand_back_after();
    let (draining, handing_back) = (shutdown.clone(), hand_back.clone());
    let ready = worker.ready.clone();
    let (ended, _ended_on_return) = {
        let t = CancellationToken::new();
        (t.clone(), t.drop_guard())
    };
    tokio::spawn(async move {
        tokio::select! {
            () = draining.cancelled() => {}
            () = ended.cancelled() => return,
        }
        ready.send_replace(false);
        tracing::info!("draining: no more pulls; finishing the messages in hand");
        tokio::time::sleep(hand_back_after).await;
        handing_back.cancel();
    });

    // Events are pulled ahead into the intake, queued per org, and taken in turn by a few
    // ingest pipelines; each takes a batch and writes it in one transaction (one commit for many
    // events, each under its own org's scope).
    let event_messages = events
        .stream()
        .max_messages_per_batch(512)
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await
        .context("consuming the bus")?;
    let intake = Arc::new(intake::Intake::new(bounds));
    let pulling = {
        let (intake, topology, stop) = (intake.clone(), topology.clone(), shutdown.clone());
        async move {
            let mut messages = event_messages;
            loop {
                tokio::select! {
                    () = intake.room() => {}
                    () = stop.cancelled() => break,
                }
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = stop.cancelled() => break,
                };
                match next {
                    Some(Ok(message)) => {
                        let org = topology.org_of_subject(&message.subject).unwrap_or_default().to_owned();
                        intake.push(&org, message);
                    }
                    Some(Err(error)) => tracing::debug!(%error, "a pull from the bus failed"),
                    None => break,
                }
            }
            intake.close().await;
        }
    };
    let keeping_alive = {
        let (intake, stop) = (intake.clone(), shutdown.clone());
        let every = (topology.ack_wait / 3).max(Duration::from_secs(1));
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => intake.keep_alive(every).await,
                    () = stop.cancelled() => return,
                }
            }
        }
    };
    let ingesting = futures::future::join_all((0..INGEST_PIPELINES).map(|_| {
        let (ingest, intake) = (ingest.clone(), intake.clone());
        let (stop, topology, hand_back) = (shutdown.clone(), topology.clone(), hand_back.clone());
        async move {
            while let Some(messages) = intake.take(chunk).await {
                ingest.handle_batch(messages, &topology, &stop, &hand_back).await;
            }
        }
    }));
    let event_loop = async move {
        tokio::join!(pulling, keeping_alive, ingesting);
    };

    // Decisions, retries and schedules queue their executions through the work stream (their
    // services own no part of the dispatch queue): each item is queued in Postgres, then acked.
    let work_messages = work
        .stream()
        .max_messages_per_batch(64)
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await
        .context("consuming work")?;
    let (relay_stop, relay_topology) = (shutdown.clone(), topology.clone());
    let relay_pool = worker.pool.clone();
    let relay_engine = engine.clone();
    let relay_wake = wake.clone();
    let work_loop =
        work_messages.take_until(shutdown.clone().cancelled_owned()).for_each_concurrent(16, |message| {
            let (stop, topology) = (relay_stop.clone(), relay_topology.clone());
            let (pool, engine, wake) = (relay_pool.clone(), relay_engine.clone(), relay_wake.clone());
            async move {
                let Ok(message) = message else { return };
                let Ok(item) = serde_json::from_slice::<WorkItem>(&message.payload) else {
                    tracing::warn!("malformed work item; dropped");
                    let _ = message.ack_with(AckKind::Term).await;
                    return;
                };
                // The runs continue the trace of what queued them (a decision, a retry).
                let span = tracing::info_span!("work", org_id = %item.org_id);
                if let Some(context) = oa_bus::trace_context_of(message.headers.as_ref()) {
                    oa_telemetry::adopt_remote_parent(&span, context);
                }
                let traceparent = span.in_scope(oa_telemetry::current_traceparent);
                let queue = || async {
                    let mut tx = begin_org(&pool, &item.org_id).await?;
                    let ids = &item.execution_ids;
                    store::dispatch::enqueue_existing(&mut tx, &item.org_id, ids, traceparent.as_deref())
                        .await?;
                    tx.commit().await?;
                    wake.notify_one();
                    Ok(())
                };
                let give_up = |reason: String| engine.give_up(&item, reason);
                delivery::settle(&message, &topology, &stop, queue, give_up).instrument(span).await;
            }
        });
    let dispatcher = Arc::new(dispatch::Dispatcher::new(worker.pool.clone(), config, wake.clone()));
    let dispatching = dispatcher.run(engine.clone(), shutdown.clone(), hand_back.clone());
    worker.ready.send_replace(true);
    tracing::info!("worker consuming the bus and work streams and dispatching executions");
    let lag =
        tokio::spawn(observe_consumers([("bus", events_watch), ("work", work_watch)], shutdown.clone()));
    tokio::join!(event_loop, work_loop, dispatching);
    // The runs' tallies go out once more now that no run is left.
    stats_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), sending_stats).await;
    invalidations.abort();
    lag.abort();
    // The scheduler and sweeper stop at `shutdown` between rounds; a round in progress gets a
    // moment to finish before it is cut off (both are safe to cut: a round is one transaction).
    let stopped = async {
        let _ = (&mut scheduling).await;
        let _ = (&mut sweeping).await;
    };
    if tokio::time::timeout(Duration::from_secs(1), stopped).await.is_err() {
        scheduling.abort();
        sweeping.abort();
    }
    tracing::info!("worker drained");
    Ok(())
}

/// How often the consumers' lag is read from JetStream.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Reads each consumer's pending, unacknowledged and redelivered counts from JetStream until
/// shutdown: consumer lag is the first thing an operator asks about.
async fn observe_consumers(
    consumers: [(&'static str, jetstream::consumer::PullConsumer); 2],
    shutdown: CancellationToken,
) {
    loop {
        for (name, consumer) in &consumers {
            match consumer.get_info().await {
                Ok(info) => {
                    let gauge = |family: &'static str, value: f64| {
                        metrics::gauge!(family, "role" => "worker", "consumer" => *name).set(value)
                    };
                    gauge(metrics::CONSUMER_PENDING, info.num_pending as f64);
                    gauge(metrics::CONSUMER_ACK_PENDING, info.num_ack_pending as f64);
                    gauge(metrics::CONSUMER_REDELIVERED, info.num_redelivered as f64);
                }
                Err(error) => tracing::debug!(%error, consumer = name, "cannot read the consumer's info"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}
