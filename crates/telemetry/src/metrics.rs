//! The plane's Prometheus metrics.
//!
//! Every family is named, typed and described once, in [`FAMILIES`]; call sites record through the
//! `metrics` facade with these names (`metrics::counter!(metrics::EVENTS_RECEIVED, ...)`), and
//! [`install`] puts one process-wide Prometheus recorder behind it. Each process serves
//! [`render`] on its admin port (`telemetry.metrics_addr`); every series carries a `role` label,
//! so a process running several roles keeps them apart.
//!
//! Labels stay bounded: no org id, execution id or raw path, except the `oneagents_org_*`
//! families, which carry `org_id` only for the orgs in `telemetry.org_allowlist` ([`org_label`]).

use std::collections::BTreeSet;
use std::sync::{OnceLock, RwLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use metrics::{counter, gauge, histogram};

/// What kind of series a family holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, kind, labels (beside `role`) and HELP text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! families {
    ($($constant:ident = $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $(pub const $constant: &str = $name;)*
        /// Every family the plane exports.
        pub const FAMILIES: &[Family] = &[
            $(Family { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

families! {
    // Gateway.
    HTTP_REQUESTS = Counter "oneagents_http_requests_total" ["route", "method", "status_class"]
        "HTTP requests the gateway answered, by route template, method and status class.";
    HTTP_REQUEST_DURATION = Histogram "oneagents_http_request_duration_seconds" ["route", "method"]
        "Time the gateway took to answer, by route template and method.";
    HTTP_IN_FLIGHT = Gauge "oneagents_http_requests_in_flight" []
        "HTTP requests the gateway is answering now.";
    AUTH_REFUSALS = Counter "oneagents_auth_refusals_total" ["reason"]
        "Requests refused by authentication or permission checks, by reason.";
    RATE_LIMITED = Counter "oneagents_rate_limit_rejections_total" ["limit"]
        "Requests refused with 429, by the limit that refused them (org or key).";
    // gRPC, server side.
    GRPC_CALLS = Counter "oneagents_grpc_server_calls_total" ["service", "method", "code"]
        "gRPC calls served, by service, method and status code.";
    GRPC_CALL_DURATION = Histogram "oneagents_grpc_server_call_duration_seconds" ["service", "method"]
        "Time taken to answer a gRPC call, by service and method.";
    // Bus and ingest.
    EVENTS_RECEIVED = Counter "oneagents_events_received_total" []
        "Events taken from the bus by the ingest consumer.";
    EVENTS_MATCHED = Counter "oneagents_events_matched_total" []
        "Events that matched at least one agent and started executions.";
    EVENTS_DEAD_LETTERED = Counter "oneagents_events_dead_lettered_total" ["reason"]
        "Events and work items set aside as dead letters, by reason.";
    EVENTS_DUPLICATE = Counter "oneagents_events_duplicates_dropped_total" []
        "Events dropped because their org had already received the same event id.";
    INGEST_BATCH = Histogram "oneagents_ingest_batch_executions" []
        "Executions inserted by one ingest transaction (the matches of one event).";
    CONSUMER_PENDING = Gauge "oneagents_bus_consumer_pending_messages" ["consumer"]
        "Messages on the stream the consumer has not yet been given (JetStream num_pending).";
    CONSUMER_ACK_PENDING = Gauge "oneagents_bus_consumer_ack_pending_messages" ["consumer"]
        "Messages given to the consumer and not yet acknowledged (JetStream num_ack_pending).";
    CONSUMER_REDELIVERED = Gauge "oneagents_bus_consumer_redelivered_messages" ["consumer"]
        "Messages the consumer has been given more than once and not yet acknowledged (JetStream num_redelivered).";
    DISPATCH_BACKLOG = Gauge "oneagents_dispatch_backlog_executions" ["state"]
        "Queued executions across orgs, by state: due (waiting for a worker, or behind a concurrency key), waiting (a debounce, throttle or retry delay) and running (leased).";
    // Executions and steps.
    EXECUTIONS_CREATED = Counter "oneagents_executions_created_total" []
        "Executions created from matched events and retries.";
    EXECUTIONS_FINISHED = Counter "oneagents_executions_finished_total" ["status"]
        "Executions that reached a final status, by that status.";
    EXECUTION_DURATION = Histogram "oneagents_execution_duration_seconds" ["status"]
        "Time from an execution's creation to its final status.";
    EXECUTIONS_LIVE = Gauge "oneagents_executions" ["status"]
        "Executions now pending, running or waiting for an approval, across orgs.";
    STEPS = Counter "oneagents_steps_total" ["type", "outcome"]
        "Steps finished, by step type and outcome.";
    STEP_DURATION = Histogram "oneagents_step_duration_seconds" ["type"]
        "Time a step took to run, by step type.";
    // LLM.
    LLM_CALLS = Counter "oneagents_llm_calls_total" ["provider", "tier", "outcome"]
        "Calls to a model provider, by provider, model tier and outcome.";
    LLM_DURATION = Histogram "oneagents_llm_call_duration_seconds" ["provider", "tier"]
        "Time a model call took, retries included, by provider and tier.";
    LLM_TOKENS = Counter "oneagents_llm_tokens_total" ["provider", "tier", "kind"]
        "Tokens used by model calls, by provider, tier and kind (prompt or completion).";
    LLM_RETRIES = Counter "oneagents_llm_retries_total" ["provider"]
        "Model calls retried after a failure, by provider.";
    LLM_BREAKER_OPEN = Gauge "oneagents_llm_circuit_breaker_open" ["provider"]
        "1 while the provider's circuit breaker is open (calls are refused without trying), else 0.";
    // Credits.
    CREDITS_RESERVED = Counter "oneagents_credits_reserved_total" []
        "Credits reserved ahead of metered steps.";
    CREDITS_COMMITTED = Counter "oneagents_credits_committed_total" []
        "Credits charged when metered steps finished.";
    CREDITS_RELEASED = Counter "oneagents_credit_releases_total" []
        "Reservations released without a charge (the step did not run or failed before the model answered).";
    CREDITS_REFUSED = Counter "oneagents_credit_refusals_total" []
        "Reservations refused because the org's balance could not cover them (402).";
    // Approvals.
    APPROVALS_OPENED = Counter "oneagents_approvals_opened_total" []
        "Approval gates opened.";
    APPROVALS_DECIDED = Counter "oneagents_approvals_decided_total" ["outcome", "channel"]
        "Approval gates decided, by outcome and the channel the decision came through.";
    APPROVALS_EXPIRED = Counter "oneagents_approvals_expired_total" []
        "Approval gates that timed out.";
    APPROVALS_PENDING = Gauge "oneagents_approvals_pending" []
        "Approval gates waiting for a decision, across orgs.";
    APPROVAL_DECISION_TIME = Histogram "oneagents_approval_decision_seconds" ["outcome"]
        "Time from a gate's opening to its decision or expiry.";
    // Runtime.
    DB_POOL_CONNECTIONS = Gauge "oneagents_db_pool_connections" ["state"]
        "Database pool connections, by state (in_use or idle).";
    PROCESS_RSS = Gauge "oneagents_process_resident_memory_bytes" []
        "Resident memory of the process.";
    PROCESS_CPU = Counter "oneagents_process_cpu_seconds_total" []
        "User and system CPU time the process has used.";
    ROLE_READY = Gauge "oneagents_role_ready" []
        "1 while the role serves (its gRPC health is SERVING, or the worker consumes the bus), else 0.";
    BUILD_INFO = Gauge "oneagents_build_info" ["version"]
        "Always 1; the version of the running build.";
    // Per-org series, for allow-listed orgs only.
    ORG_EVENTS_RECEIVED = Counter "oneagents_org_events_received_total" ["org_id"]
        "Events received, for the orgs in telemetry.org_allowlist.";
    ORG_EXECUTIONS_FINISHED = Counter "oneagents_org_executions_finished_total" ["org_id", "status"]
        "Executions finished by status, for the orgs in telemetry.org_allowlist.";
}

/// Histogram buckets for durations, in seconds: 1 ms to 5 minutes.
const SECONDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Time to an approval decision: seconds to a day.
const DECISION_SECONDS: &[f64] = &[1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 86_400.0];
/// Executions per ingest transaction.
const BATCH: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static ORG_ALLOWLIST: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Installs the process-wide recorder (once; later calls return the same handle) and describes
/// every family, so each carries its HELP.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(APPROVAL_DECISION_TIME.into()), DECISION_SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INGEST_BATCH.into()), BATCH))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness's) may already be in place; the handle then renders
        // nothing, which is all such a process asks for.
        if metrics::set_global_recorder(recorder).is_ok() {
            for family in FAMILIES {
                match family.kind {
                    Kind::Counter => metrics::describe_counter!(family.name, family.help),
                    Kind::Gauge => metrics::describe_gauge!(family.name, family.help),
                    Kind::Histogram => metrics::describe_histogram!(family.name, family.help),
                }
            }
        }
        handle
    })
}

/// Why an event is dead-lettered: the `reason` label of [`EVENTS_DEAD_LETTERED`].
pub const DEAD_LETTER_REASONS: &[&str] = &[
    "malformed_envelope",
    "subject_mismatch",
    "unstorable",
    "unknown_event_type",
    "unmatchable",
    "given_up",
];

/// Why the gateway refuses a caller: the `reason` label of [`AUTH_REFUSALS`].
pub const AUTH_REFUSAL_REASONS: &[&str] = &[
    "no_credentials",
    "malformed_key",
    "unknown_key",
    "no_jwks",
    "invalid_token",
    "unknown_org",
    "cross_site",
    "viewer_write",
];

/// Creates the series a role owns at zero, so rates and alerts see them from the first scrape
/// rather than from the first event. `providers` are the configured LLM providers.
pub fn prime(role: &'static str, providers: &[String]) {
    let zero = |name: &'static str| metrics::counter!(name, "role" => role).increment(0);
    match role {
        "gateway" => {
            metrics::gauge!(HTTP_IN_FLIGHT, "role" => role).increment(0.0);
            for reason in AUTH_REFUSAL_REASONS {
                metrics::counter!(AUTH_REFUSALS, "role" => role, "reason" => *reason).increment(0);
            }
            for limit in ["requests", "failed_sign_ins"] {
                metrics::counter!(RATE_LIMITED, "role" => role, "limit" => limit).increment(0);
            }
        }
        "worker" => {
            for provider in providers {
                metrics::counter!(LLM_RETRIES, "role" => role, "provider" => provider.clone()).increment(0);
                metrics::gauge!(LLM_BREAKER_OPEN, "role" => role, "provider" => provider.clone())
                    .increment(0.0);
            }
            for name in [EVENTS_RECEIVED, EVENTS_MATCHED, EVENTS_DUPLICATE, EXECUTIONS_CREATED] {
                zero(name);
            }
            for reason in DEAD_LETTER_REASONS {
                metrics::counter!(EVENTS_DEAD_LETTERED, "role" => role, "reason" => *reason).increment(0);
            }
            for state in ["due", "waiting", "running"] {
                metrics::gauge!(DISPATCH_BACKLOG, "role" => role, "state" => state).set(0.0);
            }
        }
        "credits" => {
            for name in [CREDITS_RESERVED, CREDITS_COMMITTED, CREDITS_RELEASED, CREDITS_REFUSED] {
                zero(name);
            }
        }
        "approvals" => {
            for name in [APPROVALS_OPENED, APPROVALS_EXPIRED] {
                zero(name);
            }
        }
        _ => {}
    }
}

/// Whether `role` serves now ([`ROLE_READY`]).
pub fn role_ready(role: &'static str, ready: bool) {
    metrics::gauge!(ROLE_READY, "role" => role).set(if ready { 1.0 } else { 0.0 });
}

/// Adds org ids whose per-org series are exported (`telemetry.org_allowlist`).
pub fn allow_orgs<'a>(orgs: impl IntoIterator<Item = &'a String>) {
    let mut allowed = ORG_ALLOWLIST.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    allowed.extend(orgs.into_iter().cloned());
}

/// The org's id as a label value, when the org is allow-listed; `None` otherwise, and then no
/// per-org series is recorded for it.
pub fn org_label(org_id: &str) -> Option<String> {
    let allowed = ORG_ALLOWLIST.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    allowed.contains(org_id).then(|| org_id.to_owned())
}

/// The Prometheus text of every series, after refreshing the process gauges under `role`.
pub fn render(role: &str) -> String {
    let handle = install();
    record_process(role);
    handle.run_upkeep();
    handle.render()
}

/// The status class of an HTTP status: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Splits a gRPC path (`/oneagents.agents.v1.Agents/CreateAgent`) into service and method.
pub fn grpc_service_method(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    (service.rsplit('.').next().unwrap_or(service), method)
}

/// Resident memory and CPU time, from `/proc/self` (Linux; elsewhere nothing is recorded).
fn record_process(role: &str) {
    let role = role.to_owned();
    metrics::gauge!(BUILD_INFO, "role" => role.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok())
    {
        metrics::gauge!(PROCESS_RSS, "role" => role.clone()).set(pages * 4096.0);
    }
    if let Some(seconds) = process_cpu_seconds() {
        metrics::counter!(PROCESS_CPU, "role" => role).absolute(seconds as u64);
    }
}

/// The user and system CPU time this process has used, in seconds to 1/100 s, from
/// `/proc/self/stat` (Linux; elsewhere `None`).
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_in_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The user and system CPU time in a `/proc/<pid>/stat` line, in seconds to 1/100 s.
pub fn cpu_seconds_in_stat(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks of 1/100 s (USER_HZ on Linux).
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_follows_the_naming_rules() {
        let mut names = BTreeSet::new();
        for family in FAMILIES {
            assert!(family.name.starts_with("oneagents_"), "{}", family.name);
            assert!(names.insert(family.name), "{} is declared twice", family.name);
            assert_eq!(family.kind == Kind::Counter, family.name.ends_with("_total"), "{}", family.name);
            assert!(!family.help.is_empty());
            let per_org = family.name.starts_with("oneagents_org_");
            for label in family.labels {
                assert!(*label != "role", "{}: role is added to every series", family.name);
                assert!(!label.contains("execution"), "{} is labelled by execution", family.name);
                assert!(*label != "org_id" || per_org, "{}: only oneagents_org_* carry org_id", family.name);
            }
            assert_eq!(per_org, family.labels.contains(&"org_id"), "{}", family.name);
        }
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(grpc_service_method("/oneagents.agents.v1.Agents/CreateAgent"), ("Agents", "CreateAgent"));
        assert_eq!(grpc_service_method("/grpc.health.v1.Health/Check"), ("Health", "Check"));
        assert_eq!(grpc_service_method("garbage"), ("garbage", ""));
    }

    #[test]
    fn only_allow_listed_orgs_get_a_label() {
        allow_orgs(&["org_big".to_owned()]);
        assert_eq!(org_label("org_big").as_deref(), Some("org_big"));
        assert_eq!(org_label("org_small"), None);
    }
}
