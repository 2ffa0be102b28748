//! Executions, traces and dead letters as the API shows them.

use oa_domain::status::ExecutionStatus;
use serde_json::{Value, json};

use crate::store::{DeadLetter, ExecutionRow, StepRow};

/// Why a pending execution waits: its own flow control, or `queued` for a worker.
fn pending_reason(execution: &ExecutionRow) -> Option<&str> {
    (execution.status == ExecutionStatus::Pending)
        .then(|| execution.pending_reason.as_deref().unwrap_or("queued"))
}

pub fn summary_json(execution: &ExecutionRow) -> Value {
    json!({
        "id": execution.id,
        "agent_id": execution.agent_id,
        "status": execution.status,
        "pending_reason": pending_reason(execution),
        "superseded_by": execution.superseded_by,
        "credits_used": execution.credits_used,
        "created_at": execution.created_at,
        "completed_at": execution.completed_at,
    })
}

pub fn step_json(step: &StepRow) -> Value {
    json!({
        "step_id": step.step_id,
        "step_type": step.step_type,
        "status": step.status,
        "output": step.output,
        "error": step.error,
        "credits_used": step.credits_used,
        "duration_ms": step.duration_ms,
        "started_at": step.started_at,
        "completed_at": step.completed_at,
    })
}

pub fn detail_json(execution: &ExecutionRow, steps: &[StepRow]) -> Value {
    let event = &execution.trigger_event;
    json!({
        "id": execution.id,
        "agent_id": execution.agent_id,
        "agent_version": execution.agent_version,
        "trigger_event": {
            "id": event["id"],
            "event_type": event["event_type"],
            "source_product": event["source_product"],
            "client_id": event["client_id"],
            "occurred_at": event["occurred_at"],
            "payload": event["payload"],
        },
        "status": execution.status,
        "pending_reason": pending_reason(execution),
        "superseded_by": execution.superseded_by,
        "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
        "credits_used": execution.credits_used,
        "error": execution.error,
        "retry_of": execution.retry_of,
        "created_at": execution.created_at,
        "started_at": execution.started_at,
        "completed_at": execution.completed_at,
    })
}

pub fn dead_letter_json(letter: &DeadLetter) -> Value {
    let payload = serde_json::from_str::<Value>(&letter.payload)
        .unwrap_or_else(|_| Value::String(letter.payload.clone()));
    json!({
        "id": letter.id,
        "subject": letter.subject,
        "event_id": letter.event_id,
        "reason": letter.reason,
        "payload": payload,
        "created_at": letter.created_at,
        "replayed_at": letter.replayed_at,
    })
}
