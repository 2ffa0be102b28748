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

/// An org's active agents, with when they were loaded.
type OrgSet = (Instant, Arc<Vec<Candidate>>);

pub struct AgentIndex {
    agents: AgentsClient<Channel>,
    token: SecretString,
    cache: Mutex<HashMap<String, OrgSet>>,
    /// Each org's settings (contacts, its own webhooks), dropped with its agents.
    settings: Mutex<HashMap<String, (Instant, Arc<OrgSettings>)>>,
}

impl AgentIndex {
    pub fn new(agents: AgentsClient<Channel>, token: SecretString) -> Self {
        AgentIndex { agents, token, cache: Mutex::new(HashMap::new()), settings: Mutex::new(HashMap::new()) }
    }

    /// Forgets an org's set; `system` forgets every org's, since system agents are in all of them.
    pub fn invalidate(&self, org_id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if org_id == "system" {
            cache.clear();
        } else {
            cache.remove(org_id);
            self.settings.lock().unwrap_or_else(|e| e.into_inner()).remove(org_id);
        }
    }

    /// The org's settings, unmasked: who its notifications and approval links go to.
    pub async fn settings(&self, org_id: &str) -> Result<Arc<OrgSettings>, ApiError> {
        {
            let cached = self.settings.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, settings)) = cached.get(org_id)
                && at.elapsed() < TTL
            {
                return Ok(settings.clone());
            }
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
        let settings = Arc::new(settings);
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org_id.to_owned(), (loaded_at, settings.clone()));
        Ok(settings)
    }

    pub async fn candidates(&self, org_id: &str) -> Result<Arc<Vec<Candidate>>, ApiError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, set)) = cache.get(org_id)
                && at.elapsed() < TTL
            {
                return Ok(set.clone());
            }
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
        let set = Arc::new(set);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org_id.to_owned(), (loaded_at, set.clone()));
        Ok(set)
    }
}
