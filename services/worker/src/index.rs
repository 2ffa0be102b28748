//! The in-memory index of each org's active agents, so matching costs no query per event per
//! agent. An org's set is loaded from the agents service on first use and dropped when the agents
//! service announces a change for that org (or for the system agents), and after a TTL as a
//! safety net.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oa_domain::settings::OrgSettings;
use oa_domain::{ApiError, Caller};
use oa_proto::agents::ListAgentsRequest;
use oa_proto::agents::agents_client::AgentsClient;
use secrecy::SecretString;
use tonic::transport::Channel;

use crate::matching::Candidate;

const TTL: Duration = Duration::from_secs(60);

/// Per-org values loaded from the agents service, each kept for [`TTL`] or until dropped.
struct PerOrg<T>(Mutex<HashMap<String, (Instant, Arc<T>)>>);

impl<T> PerOrg<T> {
    fn new() -> Self {
        PerOrg(Mutex::new(HashMap::new()))
    }

    fn fresh(&self, org_id: &str) -> Option<Arc<T>> {
        let cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cached.get(org_id).filter(|(at, _)| at.elapsed() < TTL).map(|(_, value)| value.clone())
    }

    /// Keeps `value`, loaded at `loaded_at` (an invalidation since then still wins after the TTL).
    fn keep(&self, org_id: &str, loaded_at: Instant, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org_id.to_owned(), (loaded_at, value.clone()));
        value
    }

    fn forget(&self, org_id: Option<&str>) {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match org_id {
            Some(org_id) => drop(cached.remove(org_id)),
            None => cached.clear(),
        }
    }
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
        AgentIndex { agents, token, cache: PerOrg::new(), settings: PerOrg::new() }
    }

    /// Forgets an org's set; `system` forgets every org's, since system agents are in all of them.
    pub fn invalidate(&self, org_id: &str) {
        if org_id == "system" {
            self.cache.forget(None);
        } else {
            self.cache.forget(Some(org_id));
            self.settings.forget(Some(org_id));
        }
    }

    /// The org's settings, unmasked: who its notifications and approval links go to.
    pub async fn settings(&self, org_id: &str) -> Result<Arc<OrgSettings>, ApiError> {
        if let Some(settings) = self.settings.fresh(org_id) {
            return Ok(settings);
        }
        let loaded_at = Instant::now();
        let caller = Caller::service("worker", org_id);
        let request = oa_proto::agents::GetOrgSettingsRequest {};
        let response = self
            .agents
            .clone()
            .resolve_org_settings(oa_auth::service::outgoing(request, &caller, &self.token))
            .await
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner();
        let settings: OrgSettings = serde_json::from_str(&response.settings_json)
            .map_err(|e| ApiError::internal_from("org settings", &e))?;
        Ok(self.settings.keep(org_id, loaded_at, settings))
    }

    pub async fn candidates(&self, org_id: &str) -> Result<Arc<Vec<Candidate>>, ApiError> {
        if let Some(set) = self.cache.fresh(org_id) {
            return Ok(set);
        }
        let loaded_at = Instant::now();
        let caller = Caller::service("worker", org_id);
        let request =
            ListAgentsRequest { status: "active".into(), r#type: String::new(), category: String::new() };
        let response = self
            .agents
            .clone()
            .list_agents(oa_auth::service::outgoing(request, &caller, &self.token))
            .await
            .map_err(|s| ApiError::from_status(&s))?
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
        Ok(self.cache.keep(org_id, loaded_at, set))
    }
}
