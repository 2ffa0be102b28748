//! Agents and templates as the API shows them.

use serde_json::{Value, json};

use crate::store::{AgentView, TemplateRow, VersionRow};

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 { 0.0 } else { ((part as f64 / whole as f64) * 10_000.0).round() / 10_000.0 }
}

/// The full agent object: definition, identity, status and stats.
pub fn agent_json(view: &AgentView, credits_used_this_month: i64) -> Value {
    let mut agent = serde_json::to_value(&view.definition).unwrap_or_else(|_| json!({}));
    let stats = &view.stats;
    let fields = json!({
        "id": view.id,
        "org_id": view.org_id,
        "type": view.agent_type,
        "status": view.status,
        "status_reason": view.status_reason,
        "version": view.version,
        "cloned_from": view.cloned_from,
        "template_id": view.template_id,
        "stats": {
            "total_runs": stats.total_runs,
            "success_rate": ratio(stats.succeeded_runs, stats.total_runs),
            "avg_duration_ms": if stats.total_runs == 0 { 0 } else { stats.total_duration_ms / stats.total_runs },
            "last_run_at": stats.last_run_at,
            // From the credits ledger's usage by agent for the org's current month.
            "credits_used_this_month": credits_used_this_month,
        },
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    });
    if let (Some(agent), Value::Object(fields)) = (agent.as_object_mut(), fields) {
        for (key, value) in fields {
            if !value.is_null() || !matches!(key.as_str(), "cloned_from" | "template_id" | "status_reason") {
                agent.insert(key, value);
            }
        }
    }
    agent
}

pub fn version_json(version: &VersionRow) -> Value {
    json!({
        "version": version.version,
        "status": version.status,
        "definition": version.snapshot,
        "created_by": version.created_by,
        "created_at": version.created_at,
    })
}

pub fn template_json(template: &TemplateRow) -> Value {
    json!({
        "id": template.id,
        "category": template.category,
        "name": template.name,
        "description": template.description,
        "version": template.version,
        "trigger": template.definition.trigger,
        "steps": template.definition.steps,
    })
}
