//! Queries on schema `executions`. The worker writes executions and traces through these as the
//! engine of this context; the executions service reads and controls them. Every query runs in an
//! org-scoped transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use oa_domain::agent::{AgentDefinition, StepType};
use oa_domain::ids::{AgentId, EventId, ExecutionId, OrgId};
use oa_domain::status::{ExecutionStatus, StepStatus};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

pub mod dispatch;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExecutionRow {
    #[sqlx(try_from = "String")]
    pub id: ExecutionId,
    #[sqlx(try_from = "String")]
    pub org_id: OrgId,
    #[sqlx(try_from = "String")]
    pub agent_id: AgentId,
    pub agent_version: i32,
    #[sqlx(json)]
    pub definition: AgentDefinition,
    #[sqlx(try_from = "String")]
    pub event_id: EventId,
    #[sqlx(json)]
    pub trigger_event: Value,
    #[sqlx(try_from = "String")]
    pub status: ExecutionStatus,
    #[sqlx(json(nullable))]
    pub error: Option<Value>,
    pub credits_used: i64,
    pub retry_of: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The execution span's W3C traceparent (see [`EventExecution::traceparent`]).
    pub traceparent: Option<String>,
    /// The later execution a debounce replaced this one with.
    pub superseded_by: Option<String>,
    /// Why a pending execution waits, read with its queued work where a query joins it.
    #[sqlx(default)]
    pub pending_reason: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepRow {
    pub position: i32,
    pub step_id: String,
    #[sqlx(try_from = "String")]
    pub step_type: StepType,
    #[sqlx(try_from = "String")]
    pub status: StepStatus,
    pub attempt: i32,
    #[sqlx(json(nullable))]
    pub output: Option<Value>,
    #[sqlx(json(nullable))]
    pub error: Option<Value>,
    pub credits_used: i64,
    pub duration_ms: Option<i64>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub struct NewExecution<'a> {
    pub id: &'a ExecutionId,
    pub org_id: &'a OrgId,
    pub agent_id: &'a AgentId,
    pub agent_version: i32,
    pub definition: &'a AgentDefinition,
    pub event_id: &'a EventId,
    pub trigger_event: &'a Value,
    pub retry_of: Option<&'a ExecutionId>,
}

/// Inserts an execution. Returns false when this (event, agent) already has one: redeliveries
/// create nothing. Step rows are written as steps start or end; until then [`steps`] shows them
/// from the pinned definition.
pub async fn insert(tx: &mut PgConnection, new: &NewExecution<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO executions.executions
             (id, org_id, agent_id, agent_version, definition, event_id, trigger_event, status, retry_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)
         ON CONFLICT (org_id, event_id, agent_id) WHERE retry_of IS NULL DO NOTHING",
    )
    .bind(new.id.as_str())
    .bind(new.org_id.as_str())
    .bind(new.agent_id.as_str())
    .bind(new.agent_version)
    .bind(Json(new.definition))
    .bind(new.event_id.as_str())
    .bind(Json(new.trigger_event))
    .bind(new.retry_of.map(ExecutionId::as_str))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    Ok(inserted)
}

/// One execution an event starts: its agent, the version it pins, and that definition both parsed
/// and serialized (the index serializes each agent once, not once per event).
pub struct EventExecution<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub agent_version: i32,
    pub definition: &'a AgentDefinition,
    pub definition_json: &'a str,
    /// The execution span's W3C traceparent.
    pub traceparent: Option<String>,
}

/// Inserts the executions one event starts in one statement, skipping any (event, agent) that
/// already has one; returns the ids it inserted. The ingest path uses it: one round trip per
/// event, whatever the number of agents. Step rows come later, as steps run (see [`steps`]).
pub async fn insert_for_event(
    tx: &mut PgConnection,
    org_id: &OrgId,
    event_id: &EventId,
    trigger_event: &Value,
    news: &[EventExecution<'_>],
) -> Result<Vec<String>, sqlx::Error> {
    if news.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = news.iter().map(|n| n.id).collect();
    let agents: Vec<&str> = news.iter().map(|n| n.agent_id).collect();
    let versions: Vec<i32> = news.iter().map(|n| n.agent_version).collect();
    let definitions: Vec<&str> = news.iter().map(|n| n.definition_json).collect();
    let traceparents: Vec<Option<&str>> = news.iter().map(|n| n.traceparent.as_deref()).collect();
    sqlx::query_scalar(
        "INSERT INTO executions.executions
             (id, org_id, agent_id, agent_version, definition, event_id, trigger_event, status, traceparent)
         SELECT i, $2, a, v, d::jsonb, $3, $4, 'pending', t
         FROM unnest($1::text[], $5::text[], $6::int[], $7::text[], $8::text[]) AS u(i, a, v, d, t)
         ON CONFLICT (org_id, event_id, agent_id) WHERE retry_of IS NULL DO NOTHING
         RETURNING id",
    )
    .bind(&ids)
    .bind(org_id.as_str())
    .bind(event_id.as_str())
    .bind(Json(trigger_event))
    .bind(&agents)
    .bind(&versions)
    .bind(&definitions)
    .bind(&traceparents)
    .fetch_all(&mut *tx)
    .await
}

/// The first runs (not retries) of `agent_ids` for an event that have not finished: the work a
/// redelivered event publishes again.
pub async fn unfinished_for_event(
    tx: &mut PgConnection,
    org_id: &OrgId,
    event_id: &EventId,
    agent_ids: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM executions.executions
         WHERE org_id = $3 AND event_id = $1 AND agent_id = ANY($2) AND retry_of IS NULL AND status IN ('pending', 'running')",
    )
    .bind(event_id.as_str())
    .bind(agent_ids)
    .bind(org_id.as_str())
    .fetch_all(tx)
    .await
}

pub async fn get(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &ExecutionId,
) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.*, r.pending_reason FROM executions.executions e
         LEFT JOIN executions.runnable r ON r.execution_id = e.id
         WHERE e.id = $1 AND e.org_id = $2",
    )
    .bind(id.as_str())
    .bind(org_id.as_str())
    .fetch_optional(&mut *tx)
    .await
}

/// Locks an execution for a state change.
pub async fn lock(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &ExecutionId,
) -> Result<Option<ExecutionRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions.executions WHERE id = $1 AND org_id = $2 FOR UPDATE")
        .bind(id.as_str())
        .bind(org_id.as_str())
        .fetch_optional(&mut *tx)
        .await
}

/// The trace of an execution: one record per step of its pinned definition. A step that has not
/// started has no row yet (ingest writes executions only): it shows as `pending` while the
/// execution can still run it, and as `skipped` once the execution ended without it.
pub async fn steps(tx: &mut PgConnection, execution: &ExecutionRow) -> Result<Vec<StepRow>, sqlx::Error> {
    let mut written: Vec<StepRow> =
        sqlx::query_as("SELECT * FROM executions.steps WHERE execution_id = $1 ORDER BY position")
            .bind(execution.id.as_str())
            .fetch_all(&mut *tx)
            .await?;
    let unstarted = if execution.status.is_live() { StepStatus::Pending } else { StepStatus::Skipped };
    let mut trace = Vec::with_capacity(execution.definition.steps.len());
    for (position, step) in execution.definition.steps.iter().enumerate() {
        let position = position as i32;
        match written.iter().position(|r| r.position == position) {
            Some(index) => trace.push(written.swap_remove(index)),
            None => trace.push(StepRow {
                position,
                step_id: step.id.clone(),
                step_type: step.kind.step_type(),
                status: unstarted,
                attempt: 0,
                output: None,
                error: None,
                credits_used: 0,
                duration_ms: None,
                started_at: None,
                completed_at: None,
            }),
        }
    }
    Ok(trace)
}

/// The slot of a step row: its execution and org, its position, and what the definition says the
/// step is.
pub struct StepSlot<'a> {
    pub execution_id: &'a ExecutionId,
    pub org_id: &'a OrgId,
    pub position: i32,
    pub step_id: &'a str,
    pub step_type: StepType,
}

/// Moves an execution to `status`; terminal statuses set `completed_at`.
pub async fn set_status(
    tx: &mut PgConnection,
    id: &ExecutionId,
    status: ExecutionStatus,
    error: Option<&Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions.executions SET status = $2, error = COALESCE($3, error), updated_at = now(),
                started_at = CASE WHEN $2 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,
                completed_at = CASE WHEN $2 IN ('completed', 'failed', 'cancelled') THEN now() ELSE completed_at END,
                credits_used = (SELECT COALESCE(sum(credits_used), 0) FROM executions.steps WHERE execution_id = $1)
         WHERE id = $1",
    )
    .bind(id.as_str())
    .bind(status.as_str())
    .bind(error.map(Json))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks a step running and returns its attempt, or `None` when another runner already finished
/// it (its result then stands).
pub async fn start_step(tx: &mut PgConnection, at: &StepSlot<'_>) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        // A step found running was interrupted by a dead worker: resuming it is the same attempt,
        // so its side effects keep their idempotency key.
        "INSERT INTO executions.steps (execution_id, position, org_id, step_id, step_type, status, attempt, started_at)
         VALUES ($1, $2, $3, $4, $5, 'running', 1, now())
         ON CONFLICT (execution_id, position) DO UPDATE
            SET attempt = CASE WHEN steps.status = 'running' THEN GREATEST(steps.attempt, 1) ELSE steps.attempt + 1 END,
                status = 'running', started_at = COALESCE(steps.started_at, now())
            WHERE steps.status IN ('pending', 'running')
         RETURNING attempt",
    )
    .bind(at.execution_id.as_str())
    .bind(at.position)
    .bind(at.org_id.as_str())
    .bind(at.step_id)
    .bind(at.step_type.as_str())
    .fetch_optional(&mut *tx)
    .await
}

/// One step's row, as it is now.
pub async fn step(
    tx: &mut PgConnection,
    id: &ExecutionId,
    position: i32,
) -> Result<Option<StepRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions.steps WHERE execution_id = $1 AND position = $2")
        .bind(id.as_str())
        .bind(position)
        .fetch_optional(&mut *tx)
        .await
}

/// How a step ended, as its row records it.
pub struct StepOutcome<'a> {
    pub status: StepStatus,
    pub output: Option<&'a Value>,
    pub error: Option<&'a Value>,
    pub credits_used: i64,
    pub duration_ms: i64,
}

impl StepOutcome<'_> {
    /// An outcome with only a status: no output, no error, no credits, no duration.
    pub fn ended(status: StepStatus) -> StepOutcome<'static> {
        StepOutcome { status, output: None, error: None, credits_used: 0, duration_ms: 0 }
    }
}

pub async fn finish_step(
    tx: &mut PgConnection,
    at: &StepSlot<'_>,
    outcome: &StepOutcome<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO executions.steps (execution_id, position, org_id, step_id, step_type, status, output, error,
                                       credits_used, duration_ms, started_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())
         ON CONFLICT (execution_id, position) DO UPDATE
            SET status = $6, output = $7, error = $8, credits_used = $9, duration_ms = $10,
                completed_at = now(), started_at = COALESCE(steps.started_at, now())",
    )
    .bind(at.execution_id.as_str())
    .bind(at.position)
    .bind(at.org_id.as_str())
    .bind(at.step_id)
    .bind(at.step_type.as_str())
    .bind(outcome.status.as_str())
    .bind(outcome.output.map(Json))
    .bind(outcome.error.map(Json))
    .bind(outcome.credits_used)
    .bind(outcome.duration_ms)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A step that ran and completed without a row of its own yet: a pure transform, recorded with
/// the steps after it (`record_completed_steps`).
pub struct CompletedStep {
    pub position: i32,
    pub step_id: String,
    pub step_type: StepType,
    pub output: Value,
    pub credits_used: i64,
    pub duration_ms: i64,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
}

/// Records completed steps of one execution in one statement, with the times they ran.
pub async fn record_completed_steps(
    tx: &mut PgConnection,
    org_id: &OrgId,
    execution_id: &ExecutionId,
    steps: &[CompletedStep],
) -> Result<(), sqlx::Error> {
    if steps.is_empty() {
        return Ok(());
    }
    let positions: Vec<i32> = steps.iter().map(|s| s.position).collect();
    let step_ids: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    let types: Vec<&str> = steps.iter().map(|s| s.step_type.as_str()).collect();
    let outputs: Vec<Json<&Value>> = steps.iter().map(|s| Json(&s.output)).collect();
    let credits: Vec<i64> = steps.iter().map(|s| s.credits_used).collect();
    let durations: Vec<i64> = steps.iter().map(|s| s.duration_ms).collect();
    let started: Vec<DateTime<Utc>> = steps.iter().map(|s| s.started_at).collect();
    let completed: Vec<DateTime<Utc>> = steps.iter().map(|s| s.completed_at).collect();
    sqlx::query(
        "INSERT INTO executions.steps (execution_id, position, org_id, step_id, step_type, status, output,
                                       credits_used, duration_ms, started_at, completed_at)
         SELECT $1, p, $2, i, t, 'completed', o, k, d, s, c
         FROM unnest($3::int[], $4::text[], $5::text[], $6::jsonb[], $7::bigint[], $8::bigint[],
                     $9::timestamptz[], $10::timestamptz[]) AS u(p, i, t, o, k, d, s, c)
         ON CONFLICT (execution_id, position) DO UPDATE
            SET status = 'completed', output = EXCLUDED.output, error = NULL, credits_used = EXCLUDED.credits_used,
                duration_ms = EXCLUDED.duration_ms, completed_at = EXCLUDED.completed_at,
                started_at = COALESCE(steps.started_at, EXCLUDED.started_at)",
    )
    .bind(execution_id.as_str())
    .bind(org_id.as_str())
    .bind(&positions)
    .bind(&step_ids)
    .bind(&types)
    .bind(&outputs)
    .bind(&credits)
    .bind(&durations)
    .bind(&started)
    .bind(&completed)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records what a step that is still open is waiting on (an approval gate's state).
pub async fn set_waiting_output(
    tx: &mut PgConnection,
    id: &ExecutionId,
    position: i32,
    output: &Value,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE executions.steps SET output = $3 WHERE execution_id = $1 AND position = $2 AND status = 'running'",
    )
    .bind(id.as_str())
    .bind(position)
    .bind(Json(output))
    .execute(&mut *tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Marks every step row not yet finished as `status` (cancelled executions skip what is left;
/// steps that never started have no row and show as skipped once the execution ended).
pub async fn close_open_steps(
    tx: &mut PgConnection,
    id: &ExecutionId,
    status: StepStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions.steps SET status = $2, completed_at = now()
         WHERE execution_id = $1 AND status IN ('pending', 'running')",
    )
    .bind(id.as_str())
    .bind(status.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Fails the step an execution was running when it was given up, with `error`.
pub async fn fail_running_steps(
    tx: &mut PgConnection,
    id: &ExecutionId,
    error: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions.steps SET status = 'failed', error = $2, completed_at = now()
         WHERE execution_id = $1 AND status = 'running'",
    )
    .bind(id.as_str())
    .bind(Json(error))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The agent's executions that have not ended, locked for a cancel.
pub async fn lock_unfinished_of_agent(
    tx: &mut PgConnection,
    org_id: &OrgId,
    agent_id: &AgentId,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM executions.executions
         WHERE org_id = $1 AND agent_id = $2 AND status IN ('pending', 'running', 'waiting_approval')
         ORDER BY id FOR UPDATE",
    )
    .bind(org_id.as_str())
    .bind(agent_id.as_str())
    .fetch_all(&mut *tx)
    .await
}

pub struct ListFilter<'a> {
    pub agent_id: &'a str,
    pub status: Option<ExecutionStatus>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// The last id of the previous page: ids sort by creation, so the cursor stays correct while
    /// new executions arrive.
    pub cursor: &'a str,
    pub limit: i64,
}

pub async fn list(
    tx: &mut PgConnection,
    org_id: &OrgId,
    filter: &ListFilter<'_>,
) -> Result<(Vec<ExecutionRow>, i64), sqlx::Error> {
    let rows: Vec<ExecutionRow> = sqlx::query_as(
        "SELECT e.*, r.pending_reason FROM executions.executions e
         LEFT JOIN executions.runnable r ON r.execution_id = e.id
         WHERE e.org_id = $1 AND ($2 = '' OR e.agent_id = $2) AND ($3::text IS NULL OR e.status = $3)
           AND ($4::timestamptz IS NULL OR e.created_at >= $4) AND ($5::timestamptz IS NULL OR e.created_at < $5)
           AND ($6 = '' OR e.id < $6)
         ORDER BY e.id DESC LIMIT $7",
    )
    .bind(org_id.as_str())
    .bind(filter.agent_id)
    .bind(filter.status.map(ExecutionStatus::as_str))
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.cursor)
    .bind(filter.limit)
    .fetch_all(&mut *tx)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM executions.executions
         WHERE org_id = $1 AND ($2 = '' OR agent_id = $2) AND ($3::text IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)",
    )
    .bind(org_id.as_str())
    .bind(filter.agent_id)
    .bind(filter.status.map(ExecutionStatus::as_str))
    .bind(filter.from)
    .bind(filter.to)
    .fetch_one(&mut *tx)
    .await?;
    Ok((rows, total))
}

/// The recorded results of a step's side effects, by idempotency key. The runner reads them in
/// the transaction that starts the step, so a side effect that already happened is not repeated.
pub async fn side_effects_of_step(
    tx: &mut PgConnection,
    execution_id: &ExecutionId,
    step_id: &str,
) -> Result<HashMap<String, Value>, sqlx::Error> {
    let rows: Vec<(String, Json<Value>)> = sqlx::query_as(
        "SELECT idempotency_key, result FROM executions.side_effects WHERE execution_id = $1 AND step_id = $2",
    )
    .bind(execution_id.as_str())
    .bind(step_id)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(key, result)| (key, result.0)).collect())
}

/// Records side effects that succeeded, in the transaction that finishes their step.
pub async fn record_side_effects(
    tx: &mut PgConnection,
    org_id: &OrgId,
    execution_id: &ExecutionId,
    step_id: &str,
    results: &[(String, Value)],
) -> Result<(), sqlx::Error> {
    if results.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = results.iter().map(|(key, _)| key.as_str()).collect();
    let values: Vec<Json<&Value>> = results.iter().map(|(_, value)| Json(value)).collect();
    sqlx::query(
        "INSERT INTO executions.side_effects (idempotency_key, org_id, execution_id, step_id, result)
         SELECT k, $3, $4, $5, r FROM unnest($1::text[], $2::jsonb[]) AS u(k, r)
         ON CONFLICT DO NOTHING",
    )
    .bind(keys)
    .bind(values)
    .bind(org_id.as_str())
    .bind(execution_id.as_str())
    .bind(step_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: String,
    pub org_id: String,
    pub subject: String,
    pub event_id: Option<String>,
    pub payload: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Stores dead letters of one org in one statement (a letter already stored is left as it is).
pub async fn insert_dead_letters(tx: &mut PgConnection, letters: &[DeadLetter]) -> Result<(), sqlx::Error> {
    let column = |pick: fn(&DeadLetter) -> Option<&str>| letters.iter().map(pick).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO executions.dead_letters (id, org_id, subject, event_id, payload, reason)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(column(|l| Some(&l.id)))
    .bind(column(|l| Some(&l.org_id)))
    .bind(column(|l| Some(&l.subject)))
    .bind(column(|l| l.event_id.as_deref()))
    .bind(column(|l| Some(&l.payload)))
    .bind(column(|l| Some(&l.reason)))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn dead_letters(
    tx: &mut PgConnection,
    org_id: &OrgId,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions.dead_letters WHERE org_id = $1 ORDER BY id DESC LIMIT $2")
        .bind(org_id.as_str())
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
}

pub async fn lock_dead_letter(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &str,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM executions.dead_letters WHERE id = $1 AND org_id = $2 FOR UPDATE")
        .bind(id)
        .bind(org_id.as_str())
        .fetch_optional(&mut *tx)
        .await
}

pub async fn mark_replayed(tx: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE executions.dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Live executions across orgs, by status (`pending`, `running`, `waiting_approval`), for the
/// gauges: pending and running from the dispatch queue (a queued execution is pending until a
/// worker leases it), waiting from the executions. Reads every org under the sweeper policy, so it
/// opens its own transaction.
pub async fn count_live(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.sweeper', 'on', true)").execute(&mut *tx).await?;
    let counts = sqlx::query_as(
        "SELECT CASE WHEN lease_owner IS NULL THEN 'pending' ELSE 'running' END, count(*)
         FROM executions.runnable GROUP BY 1
         UNION ALL
         SELECT 'waiting_approval', count(*) FROM executions.executions WHERE status = 'waiting_approval'",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counts)
}
