//! Schema `approvals`: gates, their one decision, and the append-only audit. Every function runs
//! inside the caller's org transaction (row-level security), except the sweeper's cross-org reads,
//! which set `app.sweeper` for their own transaction.

use chrono::{DateTime, Utc};
use oa_domain::ids::{AgentId, ExecutionId, GateId, OrgId};
use oa_domain::status::{DecidedVia, GateAction, GateActor, GateStatus};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Row};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Gate {
    #[sqlx(try_from = "String")]
    pub id: GateId,
    #[sqlx(try_from = "String")]
    pub org_id: OrgId,
    #[sqlx(try_from = "String")]
    pub execution_id: ExecutionId,
    #[sqlx(try_from = "String")]
    pub agent_id: AgentId,
    pub step_id: String,
    pub message: String,
    pub approvers: Vec<String>,
    #[sqlx(try_from = "String")]
    pub status: GateStatus,
    pub outcome: Option<String>,
    pub on_timeout: String,
    pub escalate_to: Option<String>,
    pub expires_in_secs: i64,
    pub escalated_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_via: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub version: i32,
    pub published_version: i32,
    pub created_at: DateTime<Utc>,
}

pub(crate) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Gate {
    /// The record of the API: the reference's fields, then the decision and the gate's rules.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "execution_id": self.execution_id,
            "agent_id": self.agent_id,
            "step_id": self.step_id,
            "message": self.message,
            "status": self.status,
            "expires_at": time(&self.expires_at),
            "created_at": time(&self.created_at),
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.as_ref().map(time),
            "note": self.note,
            "decided_via": self.decided_via,
            "outcome": self.outcome,
            "approvers": self.approvers,
            "on_timeout": self.on_timeout,
            "escalate_to": self.escalate_to,
            "escalated_at": self.escalated_at.as_ref().map(time),
        })
    }
}

pub struct NewGate<'a> {
    pub id: &'a GateId,
    pub org_id: &'a OrgId,
    pub execution_id: &'a ExecutionId,
    pub agent_id: &'a AgentId,
    pub step_id: &'a str,
    pub message: &'a str,
    pub approvers: &'a [String],
    pub on_timeout: &'a str,
    pub escalate_to: Option<&'a str>,
    pub expires_in_secs: i64,
}

/// Opens the gate of an execution's step, or finds the one already open. `true` when new.
pub async fn open(tx: &mut PgConnection, new: &NewGate<'_>) -> Result<(Gate, bool), sqlx::Error> {
    let created = sqlx::query(
        "INSERT INTO approvals.gates (id, org_id, execution_id, agent_id, step_id, message, approvers,
                                     status, on_timeout, escalate_to, expires_in_secs, expires_at,
                                     published_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, now() + $10::bigint * interval '1 second', 1)
         ON CONFLICT (execution_id, step_id) DO NOTHING RETURNING *",
    )
    .bind(new.id.as_str())
    .bind(new.org_id.as_str())
    .bind(new.execution_id.as_str())
    .bind(new.agent_id.as_str())
    .bind(new.step_id)
    .bind(new.message)
    .bind(new.approvers)
    .bind(new.on_timeout)
    .bind(new.escalate_to)
    .bind(new.expires_in_secs)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = created {
        // Opening needs no publish (published_version starts at 1): the engine that opened it is
        // the one waiting on it.
        let gate = Gate::from_row(&row)?;
        let detail = json!({"approvers": gate.approvers, "expires_at": time(&gate.expires_at)});
        audit(tx, &gate, GateAction::Opened, "engine", GateActor::System, None, Some(&detail)).await?;
        return Ok((gate, true));
    }
    let row = sqlx::query("SELECT * FROM approvals.gates WHERE execution_id = $1 AND step_id = $2")
        .bind(new.execution_id.as_str())
        .bind(new.step_id)
        .fetch_one(&mut *tx)
        .await?;
    Ok((Gate::from_row(&row)?, false))
}

pub async fn get(tx: &mut PgConnection, org_id: &OrgId, id: &GateId) -> Result<Option<Gate>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM approvals.gates WHERE org_id = $1 AND id = $2")
        .bind(org_id.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    row.as_ref().map(Gate::from_row).transpose()
}

/// The gate, locked until the transaction ends: decisions on one gate are taken one at a time.
pub async fn lock(tx: &mut PgConnection, org_id: &OrgId, id: &GateId) -> Result<Option<Gate>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM approvals.gates WHERE org_id = $1 AND id = $2 FOR UPDATE")
        .bind(org_id.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    row.as_ref().map(Gate::from_row).transpose()
}

/// A page of the org's gates, newest first, after `cursor` (the last id of the previous page).
pub async fn list(
    tx: &mut PgConnection,
    org_id: &OrgId,
    status: &str,
    cursor: &str,
    limit: i64,
) -> Result<(Vec<Gate>, i64), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT * FROM approvals.gates WHERE org_id = $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(org_id.as_str())
    .bind(status)
    .bind(cursor)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM approvals.gates WHERE org_id = $1 AND ($2 = '' OR status = $2)",
    )
    .bind(org_id.as_str())
    .bind(status)
    .fetch_one(&mut *tx)
    .await?;
    Ok((rows.iter().map(Gate::from_row).collect::<Result<_, _>>()?, total))
}

/// Who decided, and how.
pub struct Decision<'a> {
    pub status: GateStatus,
    pub outcome: &'a str,
    pub by: &'a str,
    pub via: DecidedVia,
    pub note: Option<&'a str>,
}

/// Closes a pending gate with its one decision (the caller holds the lock and checked `pending`).
pub async fn decide(
    tx: &mut PgConnection,
    id: &GateId,
    decision: &Decision<'_>,
) -> Result<Gate, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE approvals.gates SET status = $2, outcome = $3, decided_by = $4, decided_via = $5,
                decided_at = now(), note = $6, version = version + 1, updated_at = now()
         WHERE id = $1 AND status = 'pending' RETURNING *",
    )
    .bind(id.as_str())
    .bind(decision.status.as_str())
    .bind(decision.outcome)
    .bind(decision.by)
    .bind(decision.via.as_str())
    .bind(decision.note)
    .fetch_one(&mut *tx)
    .await?;
    Gate::from_row(&row)
}

/// Hands an expired gate to `role` with a fresh expiry.
pub async fn escalate(tx: &mut PgConnection, id: &GateId, role: &str) -> Result<Gate, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE approvals.gates SET approvers = ARRAY[$2], escalated_at = now(),
                expires_at = now() + expires_in_secs * interval '1 second',
                version = version + 1, updated_at = now()
         WHERE id = $1 AND status = 'pending' RETURNING *",
    )
    .bind(id.as_str())
    .bind(role)
    .fetch_one(&mut *tx)
    .await?;
    Gate::from_row(&row)
}

/// Denies the open gates of executions being cancelled. The cancel ends the execution itself, so
/// the change is marked published: the engine is not woken for it.
pub async fn deny_open(
    tx: &mut PgConnection,
    execution_ids: &[String],
    by: &str,
    reason: &str,
) -> Result<Vec<Gate>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE approvals.gates SET status = 'denied', outcome = 'denied', decided_by = $2,
                decided_via = 'cancel', decided_at = now(), note = $3, version = version + 1,
                published_version = version + 1, updated_at = now()
         WHERE execution_id = ANY($1) AND status = 'pending' RETURNING *",
    )
    .bind(execution_ids)
    .bind(by)
    .bind(reason)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter().map(Gate::from_row).collect()
}

pub async fn mark_published(tx: &mut PgConnection, id: &GateId, version: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE approvals.gates SET published_version = GREATEST(published_version, $2) WHERE id = $1",
    )
    .bind(id.as_str())
    .bind(version)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Appends to the audit trail of a gate.
pub async fn audit(
    tx: &mut PgConnection,
    gate: &Gate,
    action: GateAction,
    actor: &str,
    principal_type: GateActor,
    note: Option<&str>,
    detail: Option<&Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO approvals.audit (org_id, approval_id, action, actor, principal_type, note, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(gate.org_id.as_str())
    .bind(gate.id.as_str())
    .bind(action.as_str())
    .bind(actor)
    .bind(principal_type.as_str())
    .bind(note)
    .bind(detail.map(sqlx::types::Json))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The audit trail of a gate, oldest first.
pub async fn history(tx: &mut PgConnection, id: &GateId) -> Result<Vec<Value>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT action, actor, principal_type, note, detail, created_at FROM approvals.audit
         WHERE approval_id = $1 ORDER BY id",
    )
    .bind(id.as_str())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|row| {
            let at: DateTime<Utc> = row.try_get("created_at")?;
            let detail: Option<sqlx::types::Json<Value>> = row.try_get("detail")?;
            Ok(json!({
                "action": row.try_get::<String, _>("action")?,
                "actor": row.try_get::<String, _>("actor")?,
                "principal_type": row.try_get::<String, _>("principal_type")?,
                "note": row.try_get::<Option<String>, _>("note")?,
                "detail": detail.map(|d| d.0),
                "at": time(&at),
            }))
        })
        .collect()
}

/// A gate the sweeper must look at, and its org.
pub struct Due {
    pub id: String,
    pub org_id: String,
}

/// Pending gates past their expiry, and changed gates whose publish lags, across every org.
/// Gates waiting for a decision, across orgs (in the sweeper's transaction, after [`due`]).
pub async fn count_pending(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM approvals.gates WHERE status = 'pending'")
        .fetch_one(&mut *tx)
        .await
}

pub async fn due(
    tx: &mut PgConnection,
    republish_after_secs: i64,
    limit: i64,
) -> Result<(Vec<Due>, Vec<Due>), sqlx::Error> {
    sqlx::query("SELECT set_config('app.sweeper', 'on', true)").execute(&mut *tx).await?;
    let pick = |rows: Vec<PgRow>| -> Result<Vec<Due>, sqlx::Error> {
        rows.iter().map(|r| Ok(Due { id: r.try_get("id")?, org_id: r.try_get("org_id")? })).collect()
    };
    let expired = sqlx::query(
        "SELECT id, org_id FROM approvals.gates WHERE status = 'pending' AND expires_at <= now()
         ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let lagging = sqlx::query(
        "SELECT id, org_id FROM approvals.gates
         WHERE published_version < version AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2",
    )
    .bind(republish_after_secs as f64)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok((pick(expired)?, pick(lagging)?))
}

/// The gate if it is still pending and past its expiry, locked; `None` when another replica holds
/// it or already handled it.
pub async fn lock_expired(tx: &mut PgConnection, id: &GateId) -> Result<Option<Gate>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT * FROM approvals.gates WHERE id = $1 AND status = 'pending' AND expires_at <= now()
         FOR UPDATE SKIP LOCKED",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(Gate::from_row).transpose()
}
