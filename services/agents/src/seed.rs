//! The system agents and templates shipped with the plane. Seeding installs what is missing and
//! brings system agents up to the shipped definitions; it never changes an org's data.

use oa_domain::agent::AgentDefinition;
use oa_domain::ids::AgentId;
use oa_store::{StoreError, begin_org};
use serde::Deserialize;
use sqlx::PgPool;

use crate::store::{self, TemplateRow};

const SYSTEM_AGENTS: &str = include_str!("../seed/system_agents.json");
const TEMPLATES: &str = include_str!("../seed/templates.json");

#[derive(Deserialize)]
pub struct ShippedAgent {
    pub id: String,
    pub definition: AgentDefinition,
}

#[derive(Deserialize)]
struct ShippedTemplate {
    id: String,
    category: String,
    name: String,
    description: String,
    version: String,
    definition: AgentDefinition,
}

pub fn shipped_system_agents() -> Vec<ShippedAgent> {
    serde_json::from_str(SYSTEM_AGENTS).expect("the shipped system agents have the agent shape")
}

pub fn shipped_templates() -> Vec<TemplateRow> {
    let shipped: Vec<ShippedTemplate> =
        serde_json::from_str(TEMPLATES).expect("the shipped templates have the template shape");
    shipped
        .into_iter()
        .map(|t| TemplateRow {
            id: t.id,
            category: t.category,
            name: t.name,
            description: t.description,
            version: t.version,
            definition: t.definition,
        })
        .collect()
}

/// Returns whether a system agent was installed or changed (workers then drop their indexes).
pub async fn seed_agents(pool: &PgPool) -> Result<bool, StoreError> {
    let mut tx = begin_org(pool, "system").await?;
    for template in shipped_templates() {
        store::upsert_template(&mut tx, &template).await?;
    }
    let mut changed = false;
    for agent in shipped_system_agents() {
        changed |= store::install_system_agent(&mut tx, &AgentId::from(agent.id.as_str()), &agent.definition)
            .await?;
    }
    tx.commit().await?;
    Ok(changed)
}
