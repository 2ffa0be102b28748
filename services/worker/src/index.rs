//! The in-memory index of each org's active agents, so matching costs no query per event per
//! agent. An org's set is loaded from the agents service on first use and dropped when the agents
//! service announces a change for that org (or for the system agents), and after a TTL as a
//! safety net.

use std::sync::Arc;
use std::time::Duration;

use oa_domain::settings::OrgSettings;
use oa_domain::{ApiError, Caller};
use oa_proto::agents::ListAgentsRequest;
use oa_proto::agents::agents_client::AgentsClient;
use secrecy::SecretString;
use tonic::transport::Channel;

use crate::matching::Candidate;

const TTL: Duration = Duration::from_secs(60);

/// Per-org values loaded from the agents service, each kept for [`TTL`] or until dropped; at
/// most [`ORGS`] orgs, the least recently used going first. Concurrent loads of one org are one.
type PerOrg<T> = moka::future::Cache<String, Arc<T>>;

/// Orgs whose agents and settings a worker keeps at once.
const ORGS: u64 = 100_000;

fn per_org<T: Send + Sync + 'static>() -> PerOrg<T> {
    moka::future::Cache::builder().max_capacity(ORGS).time_to_live(TTL).build()
}

pub struct AgentIndex {
    agents: AgentsClient<Channel>,
    token: SecretString,
    /// Each org's active agents.
    cache: PerOrg<Vec<Candidate>>,
    /// Each org's settings (contacts, its own webhooks), dropped with its agents.
    settings: PerOrg<OrgSettings>,
}

impl AgentIndex {
    pub fn new(agents: AgentsClient<Channel>, token: SecretString) -> Self {
        AgentIndex { agents, token, cache: per_org(), settings: per_org() }
    }

    /// Forgets an org's set; `system` forgets every org's, since system agents are in all of them.
    /// A load already in flight may still land, and lives out its TTL.
    pub async fn invalidate(&self, org_id: &str) {
        if org_id == "system" {
            self.cache.invalidate_all();
        } else {
            self.cache.invalidate(org_id).await;
            self.settings.invalidate(org_id).await;
        }
    }

    /// The org's settings, unmasked: who its notifications and approval links go to.
    pub async fn settings(&self, org_id: &str) -> Result<Arc<OrgSettings>, ApiError> {
        let load = async { self.load_settings(org_id).await.map(Arc::new) };
        self.settings.try_get_with_by_ref(org_id, load).await.map_err(|error| (*error).clone())
    }

    async fn load_settings(&self, org_id: &str) -> Result<OrgSettings, ApiError> {
        let caller = Caller::service("worker", org_id);
        let request = oa_proto::agents::GetOrgSettingsRequest {};
        let response = self
            .agents
            .clone()
            .resolve_org_settings(oa_auth::service::outgoing(request, &caller, &self.token))
            .await
            .map_err(|s| oa_proto::status::api_error(&s))?
            .into_inner();
        serde_json::from_str(&response.settings_json).map_err(|e| ApiError::internal_from("org settings", &e))
    }

    pub async fn candidates(&self, org_id: &str) -> Result<Arc<Vec<Candidate>>, ApiError> {
        let load = async { self.load_candidates(org_id).await.map(Arc::new) };
        self.cache.try_get_with_by_ref(org_id, load).await.map_err(|error| (*error).clone())
    }

    async fn load_candidates(&self, org_id: &str) -> Result<Vec<Candidate>, ApiError> {
        let caller = Caller::service("worker", org_id);
        let request =
            ListAgentsRequest { status: "active".into(), r#type: String::new(), category: String::new() };
        let response = self
            .agents
            .clone()
            .list_agents(oa_auth::service::outgoing(request, &caller, &self.token))
            .await
            .map_err(|s| oa_proto::status::api_error(&s))?
            .into_inner();
        let mut set = Vec::with_capacity(response.agents.len());
        for agent in response.agents {
            let value: serde_json::Value = serde_json::from_str(&agent.agent_json)
                .map_err(|e| ApiError::internal_from("agent index", &e))?;
            let definition: oa_domain::agent::AgentDefinition = serde_json::from_value(value.clone())
                .map_err(|e| ApiError::internal_from("agent index", &e))?;
            let definition_json =
                serde_json::to_string(&definition).map_err(|e| ApiError::internal_from("agent index", &e))?;
            set.push(Candidate {
                id: value["id"].as_str().unwrap_or_default().to_owned(),
                version: value["version"].as_i64().unwrap_or(1) as i32,
                cloned_from: value["cloned_from"].as_str().map(str::to_owned),
                definition,
                definition_json,
            });
        }
        Ok(set)
    }
}
