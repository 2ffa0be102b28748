//! What the runner tells Prometheus: steps by type and outcome, executions by final status, and
//! how long each took.

use chrono::{DateTime, Utc};
use oa_domain::status::ExecutionStatus;
use oa_telemetry::metrics;

/// A step ended with `outcome` (`completed`, `skipped`, `waiting`, `failed`) after `seconds`.
pub fn step(step_type: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!(metrics::STEPS, "role" => "worker", "type" => step_type, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(metrics::STEP_DURATION, "role" => "worker", "type" => step_type).record(seconds);
}

/// An execution of `org_id`, created at `created_at`, reached its final `status`.
pub fn execution_finished(org_id: &str, status: ExecutionStatus, created_at: DateTime<Utc>) {
    let status_label = status.as_str();
    metrics::counter!(metrics::EXECUTIONS_FINISHED, "role" => "worker", "status" => status_label)
        .increment(1);
    let seconds = (Utc::now() - created_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(metrics::EXECUTION_DURATION, "role" => "worker", "status" => status_label)
        .record(seconds);
    if let Some(org) = metrics::org_label(org_id) {
        metrics::counter!(metrics::ORG_EXECUTIONS_FINISHED, "role" => "worker", "org_id" => org,
            "status" => status_label)
        .increment(1);
    }
}
