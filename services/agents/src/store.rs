//! Queries on schema `agents`. Every org-scoped query runs in a transaction from
//! `oa_store::begin_org`, so row-level security backs up each `WHERE org_id`.

use chrono::{DateTime, Utc};
use oa_domain::agent::{AgentDefinition, AgentStatus, AgentType, Trigger};
use oa_domain::ids::{AgentId, OrgId};
use oa_domain::settings::OrgSettings;
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;

/// An agent row with the calling org's view of it: its own status for a system agent, and its
/// own run counters.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentView {
    #[sqlx(try_from = "String")]
    pub id: AgentId,
    #[sqlx(try_from = "String")]
    pub org_id: OrgId,
    #[sqlx(rename = "type", try_from = "String")]
    pub agent_type: AgentType,
    #[sqlx(rename = "effective_status", try_from = "String")]
    pub status: AgentStatus,
    /// Why the agent is in `error`, when it is.
    pub status_reason: Option<String>,
    #[sqlx(json)]
    pub definition: AgentDefinition,
    pub version: i32,
    pub cloned_from: Option<String>,
    pub template_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Stats {
    pub total_runs: i64,
    pub succeeded_runs: i64,
    pub total_duration_ms: i64,
    pub last_run_at: Option<DateTime<Utc>>,
}

macro_rules! view_select {
    () => {
        "SELECT a.id, a.org_id, a.type, COALESCE(o.status, a.status) AS effective_status, a.status_reason, a.definition,
                a.version, a.cloned_from, a.template_id, a.created_at, a.updated_at,
                COALESCE(s.total_runs, 0) AS total_runs, COALESCE(s.succeeded_runs, 0) AS succeeded_runs,
                COALESCE(s.total_duration_ms, 0) AS total_duration_ms, s.last_run_at
         FROM agents.agents a
         LEFT JOIN agents.org_overrides o ON o.agent_id = a.id AND o.org_id = $1
         LEFT JOIN agents.agent_stats s ON s.agent_id = a.id AND s.org_id = $1
         WHERE a.deleted_at IS NULL AND (a.org_id = $1 OR a.org_id = 'system') "
    };
}

pub struct ListFilter<'a> {
    pub status: &'a str,
    pub agent_type: &'a str,
    pub category: &'a str,
}

pub async fn list(
    tx: &mut PgConnection,
    org_id: &OrgId,
    filter: &ListFilter<'_>,
) -> Result<Vec<AgentView>, sqlx::Error> {
    sqlx::query_as(concat!(
        view_select!(),
        "AND ($2 = '' OR COALESCE(o.status, a.status) = $2)
           AND ($3 = '' OR a.type = $3)
           AND ($4 = '' OR a.category = $4)
         ORDER BY (a.org_id = 'system') DESC, a.created_at, a.id"
    ))
    .bind(org_id.as_str())
    .bind(filter.status)
    .bind(filter.agent_type)
    .bind(filter.category)
    .fetch_all(&mut *tx)
    .await
}

pub async fn get(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
) -> Result<Option<AgentView>, sqlx::Error> {
    sqlx::query_as(concat!(view_select!(), "AND a.id = $2"))
        .bind(org_id.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
}

/// Locks an org's own agent for update; `None` for system agents, other orgs' and deleted ones.
pub async fn lock_own(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
) -> Result<Option<(AgentStatus, i32)>, sqlx::Error> {
    let row: Option<(String, i32)> = sqlx::query_as(
        "SELECT status, version FROM agents.agents
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(id.as_str())
    .bind(org_id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|(status, version)| Ok((oa_store::text_column(status)?, version))).transpose()
}

pub struct NewAgent<'a> {
    pub id: &'a AgentId,
    pub org_id: &'a OrgId,
    pub agent_type: AgentType,
    pub definition: &'a AgentDefinition,
    pub cloned_from: Option<&'a str>,
    pub template_id: Option<&'a str>,
    pub created_by: &'a str,
}

pub async fn insert(tx: &mut PgConnection, agent: &NewAgent<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.agents
             (id, org_id, name, description, category, type, status, definition, version,
              cloned_from, template_id, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, 'draft', $7, 1, $8, $9, $10)",
    )
    .bind(agent.id.as_str())
    .bind(agent.org_id.as_str())
    .bind(&agent.definition.name)
    .bind(&agent.definition.description)
    .bind(&agent.definition.category)
    .bind(agent.agent_type.as_str())
    .bind(Json(agent.definition))
    .bind(agent.cloned_from)
    .bind(agent.template_id)
    .bind(agent.created_by)
    .execute(&mut *tx)
    .await?;
    record_version(tx, agent.org_id, agent.id, 1, AgentStatus::Draft, agent.definition, agent.created_by)
        .await?;
    replace_field_usage(tx, agent.id, agent.definition).await
}

/// Writes a new version of an org's agent.
pub async fn update(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
    status: AgentStatus,
    definition: &AgentDefinition,
    version: i32,
    updated_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agents.agents SET name = $3, description = $4, category = $5, status = $6, definition = $7,
                version = $8, status_reason = NULL, updated_at = now()
         WHERE id = $1 AND org_id = $2",
    )
    .bind(id.as_str())
    .bind(org_id.as_str())
    .bind(&definition.name)
    .bind(&definition.description)
    .bind(&definition.category)
    .bind(status.as_str())
    .bind(Json(definition))
    .bind(version)
    .execute(&mut *tx)
    .await?;
    record_version(tx, org_id, id, version, status, definition, updated_by).await?;
    replace_field_usage(tx, id, definition).await?;
    replace_schedule(tx, org_id, id, version, status, definition).await
}

/// Keeps `agents.schedules` in step with an agent: present only while it is active with a
/// schedule trigger.
async fn replace_schedule(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
    version: i32,
    status: AgentStatus,
    definition: &AgentDefinition,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM agents.schedules WHERE agent_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if let (Trigger::Schedule { cron, timezone }, AgentStatus::Active) = (&definition.trigger, status) {
        sqlx::query(
            "INSERT INTO agents.schedules (agent_id, org_id, version, cron, timezone, definition)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(org_id.as_str())
        .bind(version)
        .bind(cron)
        .bind(timezone)
        .bind(Json(definition))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
pub struct ScheduleRow {
    #[sqlx(try_from = "String")]
    pub agent_id: AgentId,
    #[sqlx(try_from = "String")]
    pub org_id: OrgId,
    pub version: i32,
    pub cron: String,
    pub timezone: String,
    #[sqlx(json)]
    pub definition: Value,
}

pub async fn schedules(tx: &mut PgConnection) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    sqlx::query_as("SELECT agent_id, org_id, version, cron, timezone, definition FROM agents.schedules")
        .fetch_all(&mut *tx)
        .await
}

async fn record_version(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
    version: i32,
    status: AgentStatus,
    definition: &AgentDefinition,
    created_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.agent_versions (agent_id, version, org_id, status, snapshot, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(version)
    .bind(org_id.as_str())
    .bind(status.as_str())
    .bind(Json(definition))
    .bind(created_by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn replace_field_usage(
    tx: &mut PgConnection,
    id: &AgentId,
    definition: &AgentDefinition,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM agents.filter_field_usage WHERE agent_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    if let Trigger::BusEvent { source_product, event_type, filters } = &definition.trigger {
        let event_type_id = format!("{source_product}:{event_type}");
        let fields: Vec<&str> = filters.iter().map(|f| f.field.as_str()).collect();
        sqlx::query(
            "INSERT INTO agents.filter_field_usage (agent_id, event_type_id, field_path)
             SELECT $1, $2, f FROM unnest($3::text[]) AS f ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(event_type_id)
        .bind(&fields)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

pub async fn soft_delete(tx: &mut PgConnection, org_id: &OrgId, id: &AgentId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agents.agents SET deleted_at = now(), status = 'paused', updated_at = now()
         WHERE id = $1 AND org_id = $2",
    )
    .bind(id.as_str())
    .bind(org_id.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM agents.filter_field_usage WHERE agent_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Serialises activations within one org (and only that org) until the transaction ends.
pub async fn lock_org_activations(tx: &mut PgConnection, org_id: &OrgId) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('agents.activations:' || $1, 0))")
        .bind(org_id.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn count_active(
    tx: &mut PgConnection,
    org_id: &OrgId,
    except_id: &AgentId,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM agents.agents
         WHERE org_id = $1 AND status = 'active' AND deleted_at IS NULL AND id <> $2",
    )
    .bind(org_id.as_str())
    .bind(except_id.as_str())
    .fetch_one(&mut *tx)
    .await
}

pub async fn set_override(
    tx: &mut PgConnection,
    org_id: &OrgId,
    id: &AgentId,
    status: AgentStatus,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.org_overrides (org_id, agent_id, status, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, agent_id) DO UPDATE SET status = EXCLUDED.status,
             updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(org_id.as_str())
    .bind(id.as_str())
    .bind(status.as_str())
    .bind(by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
pub struct VersionRow {
    pub version: i32,
    #[sqlx(try_from = "String")]
    pub status: AgentStatus,
    #[sqlx(json)]
    pub snapshot: Value,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

pub async fn versions(
    tx: &mut PgConnection,
    id: &AgentId,
    limit: i64,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, status, snapshot, created_by, created_at FROM agents.agent_versions
         WHERE agent_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(id.as_str())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
}

pub async fn fields_in_use(tx: &mut PgConnection, event_type_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT field_path FROM agents.filter_field_usage WHERE event_type_id = $1 ORDER BY 1",
    )
    .bind(event_type_id)
    .fetch_all(&mut *tx)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: String,
    pub category: String,
    pub name: String,
    pub description: String,
    pub version: String,
    #[sqlx(json)]
    pub definition: AgentDefinition,
}

pub async fn templates(tx: &mut PgConnection, category: &str) -> Result<Vec<TemplateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, category, name, description, version, definition FROM agents.templates
         WHERE ($1 = '' OR category = $1) ORDER BY category, name",
    )
    .bind(category)
    .fetch_all(&mut *tx)
    .await
}

pub async fn template(tx: &mut PgConnection, id: &str) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, category, name, description, version, definition FROM agents.templates WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
}

pub async fn upsert_template(tx: &mut PgConnection, template: &TemplateRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.templates (id, category, name, description, version, definition)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET category = EXCLUDED.category, name = EXCLUDED.name,
             description = EXCLUDED.description, version = EXCLUDED.version,
             definition = EXCLUDED.definition, updated_at = now()
         WHERE agents.templates.version IS DISTINCT FROM EXCLUDED.version",
    )
    .bind(&template.id)
    .bind(&template.category)
    .bind(&template.name)
    .bind(&template.description)
    .bind(&template.version)
    .bind(Json(&template.definition))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Installs a shipped system agent, or brings an installed one up to the shipped definition as a
/// new version (orgs cannot edit system agents, so the shipped definition is the only truth; running
/// executions keep the version they pinned). Runs in an org-`system` transaction. `true` when
/// something changed.
pub async fn install_system_agent(
    tx: &mut PgConnection,
    id: &AgentId,
    definition: &AgentDefinition,
) -> Result<bool, sqlx::Error> {
    let current: Option<(Json<AgentDefinition>, i32)> = sqlx::query_as(
        "SELECT definition, version FROM agents.agents WHERE id = $1 AND org_id = 'system' FOR UPDATE",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let version = match current {
        Some((installed, _)) if installed.0 == *definition => return Ok(false),
        Some((_, version)) => {
            sqlx::query(
                "UPDATE agents.agents SET name = $2, description = $3, category = $4, definition = $5,
                        version = $6, updated_at = now()
                 WHERE id = $1 AND org_id = 'system'",
            )
            .bind(id.as_str())
            .bind(&definition.name)
            .bind(&definition.description)
            .bind(&definition.category)
            .bind(Json(definition))
            .bind(version + 1)
            .execute(&mut *tx)
            .await?;
            version + 1
        }
        None => {
            sqlx::query(
                "INSERT INTO agents.agents
                     (id, org_id, name, description, category, type, status, definition, version, created_by)
                 VALUES ($1, 'system', $2, $3, $4, 'system', 'active', $5, 1, 'system')",
            )
            .bind(id.as_str())
            .bind(&definition.name)
            .bind(&definition.description)
            .bind(&definition.category)
            .bind(Json(definition))
            .execute(&mut *tx)
            .await?;
            1
        }
    };
    record_version(tx, &OrgId::from("system"), id, version, AgentStatus::Active, definition, "system")
        .await?;
    replace_field_usage(tx, id, definition).await?;
    Ok(true)
}

/// Counts one finished run in the org's stats of an agent.
/// Runs of one agent to add to its counters: how many, how many succeeded, their total duration.
pub struct RunTally {
    pub runs: i64,
    pub succeeded: i64,
    pub duration_ms: i64,
}

pub async fn record_run(
    tx: &mut PgConnection,
    org_id: &OrgId,
    agent_id: &AgentId,
    tally: &RunTally,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.agent_stats (org_id, agent_id, total_runs, succeeded_runs, total_duration_ms, last_run_at)
         VALUES ($1, $2, $5, $3, $4, now())
         ON CONFLICT (org_id, agent_id) DO UPDATE SET
             total_runs = agents.agent_stats.total_runs + EXCLUDED.total_runs,
             succeeded_runs = agents.agent_stats.succeeded_runs + EXCLUDED.succeeded_runs,
             total_duration_ms = agents.agent_stats.total_duration_ms + EXCLUDED.total_duration_ms,
             last_run_at = now()",
    )
    .bind(org_id.as_str())
    .bind(agent_id.as_str())
    .bind(tally.succeeded)
    .bind(tally.duration_ms)
    .bind(tally.runs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The org's settings (empty when never set).
pub async fn org_settings(tx: &mut PgConnection, org_id: &OrgId) -> Result<OrgSettings, sqlx::Error> {
    let stored: Option<Json<OrgSettings>> =
        sqlx::query_scalar("SELECT settings FROM agents.org_settings WHERE org_id = $1")
            .bind(org_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    Ok(stored.map(|s| s.0).unwrap_or_default())
}

pub async fn put_org_settings(
    tx: &mut PgConnection,
    org_id: &OrgId,
    settings: &OrgSettings,
    updated_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents.org_settings (org_id, settings, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (org_id) DO UPDATE SET settings = $2, updated_by = $3, updated_at = now()",
    )
    .bind(org_id.as_str())
    .bind(Json(settings))
    .bind(updated_by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How many agent definitions the org holds, with the org's creates made to take turns until the
/// transaction ends, so a count cannot be raced past the tier's cap.
pub async fn count_for_create(tx: &mut PgConnection, org_id: &OrgId) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('agents.create:' || $1))")
        .bind(org_id.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar("SELECT count(*) FROM agents.agents WHERE org_id = $1 AND deleted_at IS NULL")
        .bind(org_id.as_str())
        .fetch_one(&mut *tx)
        .await
}
