//! The agents service (`oneagents.agents.v1.Agents`): an org's agents and their versions, the
//! system agents every org sees (with each org's own paused/active override), templates, and the
//! active-agent cap of the org's tier.
//!
//! Owns schema `agents`. It validates definitions against the event catalog through the catalog
//! service and touches no other schema.

mod convert;
mod error;
mod seed;
pub mod store;
pub mod validate;

use std::collections::HashMap;

use oa_domain::agent::{AgentDefinition, AgentStatus, AgentType, TemplateCategory};
use oa_domain::catalog::EventCategory;
use oa_domain::ids::{AgentId, OrgId};
use oa_domain::settings::OrgSettings;
use oa_domain::{ApiError, Caller, ErrorCode, Permission, ids};
use oa_proto::agents as pb;
use oa_proto::agents::agents_server::{Agents, AgentsServer};
use oa_proto::catalog::catalog_client::CatalogClient;
use oa_store::begin_org;
use secrecy::SecretString;
use serde_json::{Map, Value};
use sqlx::PgPool;
use strum::VariantNames;
use tonic::transport::Channel;

pub use error::AgentsError;
pub use seed::{seed_agents, shipped_system_agents, shipped_templates};

/// Validates `body` and applies it over the org's settings: each section sent (`contacts`,
/// `webhooks`) replaces the stored one. Used by the API and by the operator's CLI.
pub async fn update_org_settings(
    pool: &PgPool,
    org_id: &str,
    body: &Value,
    updated_by: &str,
) -> Result<OrgSettings, ApiError> {
    let update = OrgSettings::parse(body).map_err(|problems| {
        let details =
            problems.iter().map(|(path, message)| serde_json::json!({"path": path, "message": message}));
        ApiError::bad_request("The settings failed validation").with_details(Value::Array(details.collect()))
    })?;
    let sections: Vec<&str> =
        body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    let stored = async {
        let mut tx = begin_org(pool, org_id).await?;
        let merged = store::org_settings(&mut tx, &OrgId::from(org_id)).await?.merged(update, &sections);
        store::put_org_settings(&mut tx, &OrgId::from(org_id), &merged, updated_by).await?;
        tx.commit().await?;
        Ok::<_, AgentsError>(merged)
    };
    Ok(stored.await?)
}

pub struct AgentsService {
    pool: PgPool,
    credits: oa_proto::credits::credits_client::CreditsClient<Channel>,
    /// Announces changes so workers drop their index of the org (absent when NATS is not used).
    changes: Option<(oa_bus::async_nats::Client, oa_bus::Topology)>,
    catalog: CatalogClient<Channel>,
    executions: oa_proto::executions::executions_client::ExecutionsClient<Channel>,
    service_token: SecretString,
    tiers: oa_config::TiersConfig,
}

pub type GuardedAgents = tonic::service::interceptor::InterceptedService<
    AgentsServer<AgentsService>,
    oa_auth::service::ServiceGuard,
>;

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;
type Result<T, E = AgentsError> = std::result::Result<T, E>;

fn agent_not_found(id: &str, caller: &Caller) -> AgentsError {
    AgentsError::NotFound { id: id.to_owned(), org_id: caller.org_id.clone() }
}

fn invalid(problems: Vec<validate::Problem>) -> ApiError {
    let details = problems.iter().map(validate::Problem::to_json).collect();
    ApiError::new(ErrorCode::InvalidAgentConfig, "Agent definition failed validation")
        .with_details(Value::Array(details))
}

fn invalid_at(path: &str, message: &str) -> ApiError {
    invalid(vec![validate::Problem { path: path.to_owned(), message: message.to_owned() }])
}

fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if value.is_empty() || allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{name} must be one of {}", allowed.join(", "))))
    }
}

fn parse_json(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|_| ApiError::bad_request("The request body is not valid JSON"))
}

/// Credits each agent used this month in the caller's org, from the credits service. Stats are
/// informative: when the credits service cannot answer, they read zero rather than failing reads.
async fn credits_by_agent(service: &AgentsService, caller: &Caller) -> HashMap<String, i64> {
    let plane = Caller::service("agents", &caller.org_id);
    let request = oa_auth::service::outgoing(
        oa_proto::credits::GetUsageRequest { month: String::new() },
        &plane,
        &service.service_token,
    );
    let Ok(usage) = service.credits.clone().get_usage(request).await else {
        return HashMap::new();
    };
    serde_json::from_str::<Value>(&usage.into_inner().usage_json)
        .ok()
        .and_then(|u| u["by_agent"].as_object().cloned())
        .map(|by_agent| by_agent.into_iter().map(|(k, v)| (k, v.as_i64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

impl AgentsService {
    async fn cancel_executions_of(&self, caller: &Caller, agent_id: &str) -> Result<()> {
        let request = oa_proto::executions::CancelExecutionsOfAgentRequest { agent_id: agent_id.to_owned() };
        self.executions
            .clone()
            .cancel_executions_of_agent(oa_auth::service::outgoing(request, caller, &self.service_token))
            .await
            .map_err(|status| oa_proto::status::api_error(&status))?;
        Ok(())
    }

    async fn respond_agent(&self, caller: &Caller, view: &store::AgentView) -> Result<pb::Agent> {
        let used = credits_by_agent(self, caller).await.get(view.id.as_str()).copied().unwrap_or(0);
        Ok(pb::Agent { agent_json: convert::agent_json(view, used).to_string() })
    }
}

fn clone_name(requested: &str, fallback: String) -> Result<String, ApiError> {
    let name = if requested.trim().is_empty() { fallback } else { requested.trim().to_owned() };
    if name.chars().count() > 200 {
        return Err(invalid_at("name", "name is a string of 1 to 200 characters"));
    }
    Ok(name)
}

impl AgentsService {
    pub fn build(
        pool: PgPool,
        nats: Option<oa_bus::async_nats::Client>,
        config: &oa_config::Config,
    ) -> Result<GuardedAgents> {
        let catalog = CatalogClient::new(oa_auth::service::channel(
            config.endpoint("catalog").map_err(|e| ApiError::internal_from("config", &e))?,
            &config.grpc,
        )?);
        let credits = oa_proto::credits::credits_client::CreditsClient::new(oa_auth::service::channel(
            config.endpoint("credits").map_err(|e| ApiError::internal_from("config", &e))?,
            &config.grpc,
        )?);
        let executions =
            oa_proto::executions::executions_client::ExecutionsClient::new(oa_auth::service::channel(
                config.endpoint("executions").map_err(|e| ApiError::internal_from("config", &e))?,
                &config.grpc,
            )?);
        let service = AgentsService {
            executions,
            pool,
            credits,
            changes: nats.map(|client| (client, oa_bus::Topology::new(&config.nats))),
            catalog,
            service_token: config.grpc.service_token.clone(),
            tiers: config.tiers.clone(),
        };
        Ok(AgentsServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        ))
    }

    /// The catalog entries a raw definition names, fetched before validation.
    async fn event_types_for(
        &self,
        caller: &Caller,
        definition: &Value,
    ) -> Result<HashMap<String, oa_domain::catalog::EventType>> {
        let mut found = HashMap::new();
        if let Some(id) = validate::trigger_event_id(definition)
            && oa_domain::catalog::split_event_type_id(&id).is_some()
            && let Some(event_type) = oa_clients::catalog::fetch_event_type(
                &mut self.catalog.clone(),
                caller,
                &self.service_token,
                &id,
            )
            .await?
        {
            found.insert(id, event_type);
        }
        Ok(found)
    }

    async fn validated(&self, caller: &Caller, definition: &Value) -> Result<AgentDefinition> {
        let catalog = self.event_types_for(caller, definition).await?;
        let tier = self.tiers.get(&caller.tier).unwrap_or(&self.tiers.starter);
        validate::validate_within(definition, &catalog, validate::Limits::of_tier(tier))
            .map_err(|problems| invalid(problems).into())
    }

    async fn org_settings(&self, caller: &Caller) -> Result<OrgSettings> {
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let settings = store::org_settings(&mut tx, &caller.org()).await?;
        tx.commit().await?;
        Ok(settings)
    }

    /// Tells the workers that `org_id`'s agents changed.
    async fn announce_change(&self, org_id: &str) {
        if let Some((client, topology)) = &self.changes
            && let Err(error) =
                client.publish(topology.agents_changed_subject(org_id), "changed".into()).await
        {
            tracing::warn!(%error, org_id, "could not announce an agents change; workers catch up within a minute");
        }
    }

    fn active_agent_cap(&self, caller: &Caller) -> u32 {
        self.tiers.get(&caller.tier).unwrap_or(&self.tiers.starter).max_active_agents
    }

    async fn view(&self, caller: &Caller, id: &str) -> Result<store::AgentView> {
        if !AgentId::is_well_formed(id) {
            return Err(agent_not_found(id, caller));
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let view = store::get(&mut tx, &caller.org(), &AgentId::from(id)).await?;
        tx.commit().await?;
        view.ok_or_else(|| agent_not_found(id, caller))
    }

    async fn insert_new(
        &self,
        caller: &Caller,
        agent_type: AgentType,
        definition: &AgentDefinition,
        cloned_from: Option<&str>,
        template_id: Option<&str>,
    ) -> Result<store::AgentView> {
        let id = AgentId::generate();
        let created_by = caller.principal_label();
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let held = store::count_for_create(&mut tx, &caller.org()).await?;
        let cap = self.tiers.get(&caller.tier).unwrap_or(&self.tiers.starter).max_agents;
        if held >= i64::from(cap) {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "The org holds {held} agent definitions, the most its tier allows ({cap}); delete some first"
                ),
            ).into());
        }
        let new = store::NewAgent {
            id: &id,
            org_id: &caller.org(),
            agent_type,
            definition,
            cloned_from,
            template_id,
            created_by: &created_by,
        };
        store::insert(&mut tx, &new).await?;
        let view = store::get(&mut tx, &caller.org(), &id).await?;
        tx.commit().await?;
        view.ok_or_else(|| {
            ApiError::internal_from("agents", &"a created agent could not be read back").into()
        })
    }

    /// A system agent accepts only the org's own pause or resume.
    async fn update_system_agent(
        &self,
        caller: &Caller,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<store::AgentView> {
        let status = match (patch.len(), patch.get("status").and_then(Value::as_str)) {
            (1, Some("active")) => AgentStatus::Active,
            (1, Some("paused")) => AgentStatus::Paused,
            _ => {
                return Err(ApiError::forbidden(
                    "System agents cannot be modified; pause or resume it with {\"status\": \"paused\"}, or clone it",
                ).into());
            }
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        store::set_override(&mut tx, &caller.org(), &AgentId::from(id), status, &caller.principal_label())
            .await?;
        let view = store::get(&mut tx, &caller.org(), &AgentId::from(id)).await?;
        tx.commit().await?;
        view.ok_or_else(|| agent_not_found(id, caller))
    }

    async fn update_own_agent(
        &self,
        caller: &Caller,
        current: store::AgentView,
        patch: Map<String, Value>,
    ) -> Result<store::AgentView> {
        if patch.is_empty() {
            return Err(invalid_at("", "the update changes nothing; send the fields to change").into());
        }
        let new_status = match patch.get("status") {
            None => current.status,
            Some(Value::String(s)) if matches!(s.as_str(), "draft" | "active" | "paused") => {
                s.parse().map_err(|_| invalid_at("status", "status is draft, active or paused"))?
            }
            Some(_) => return Err(invalid_at("status", "status is draft, active or paused").into()),
        };
        let mut merged = match serde_json::to_value(&current.definition) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ApiError::internal_from("agents", &"a stored definition is not an object").into());
            }
        };
        for (key, value) in patch {
            if key != "status" {
                merged.insert(key, value);
            }
        }
        let definition = self.validated(caller, &Value::Object(merged)).await?;

        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let Some((stored_status, stored_version)) =
            store::lock_own(&mut tx, &caller.org(), &current.id).await?
        else {
            return Err(agent_not_found(current.id.as_str(), caller));
        };
        if stored_version != current.version {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "The agent changed while this update was prepared; retry it",
            )
            .into());
        }
        if new_status == AgentStatus::Active && stored_status != AgentStatus::Active {
            store::lock_org_activations(&mut tx, &caller.org()).await?;
            let active = store::count_active(&mut tx, &caller.org(), &current.id).await?;
            let cap = self.active_agent_cap(caller);
            if active >= i64::from(cap) {
                return Err(ApiError::new(
                    ErrorCode::AgentLimitReached,
                    format!(
                        "The org already has {active} active agents, the limit of its {} tier",
                        caller.tier
                    ),
                )
                .into());
            }
        }
        let by = caller.principal_label();
        store::update(&mut tx, &caller.org(), &current.id, new_status, &definition, stored_version + 1, &by)
            .await?;
        let view = store::get(&mut tx, &caller.org(), &current.id).await?;
        tx.commit().await?;
        view.ok_or_else(|| agent_not_found(current.id.as_str(), caller))
    }
}

/// The methods behind the gRPC handlers: each takes the resolved caller and returns the
/// service's error, which the handler maps once.
impl AgentsService {
    async fn list_agents_for(
        &self,
        caller: Caller,
        request: pb::ListAgentsRequest,
    ) -> Result<pb::ListAgentsResponse> {
        caller.require(Permission::ReadAgents)?;
        let filter = request;
        one_of("status", &filter.status, AgentStatus::VARIANTS)?;
        one_of("type", &filter.r#type, AgentType::VARIANTS)?;
        one_of("category", &filter.category, EventCategory::VARIANTS)?;
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let list_filter = store::ListFilter {
            status: &filter.status,
            agent_type: &filter.r#type,
            category: &filter.category,
        };
        let views = store::list(&mut tx, &caller.org(), &list_filter).await?;
        tx.commit().await?;
        // The worker's index asks for active agents only; it needs no stats.
        let used = if matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            HashMap::new()
        } else {
            credits_by_agent(self, &caller).await
        };
        Ok(pb::ListAgentsResponse {
            total: views.len() as u64,
            agents: views
                .iter()
                .map(|v| pb::Agent {
                    agent_json: convert::agent_json(v, used.get(v.id.as_str()).copied().unwrap_or(0))
                        .to_string(),
                })
                .collect(),
        })
    }

    async fn get_agent_for(&self, caller: Caller, request: pb::GetAgentRequest) -> Result<pb::Agent> {
        caller.require(Permission::ReadAgents)?;
        let view = self.view(&caller, &request.id).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn create_agent_for(&self, caller: Caller, request: pb::CreateAgentRequest) -> Result<pb::Agent> {
        caller.require(Permission::WriteAgents)?;
        let body = parse_json(&request.definition_json)?;
        if let Some(status) = body.get("status")
            && status != "draft"
        {
            return Err(invalid_at(
                "status",
                "agents are created in draft; activate with PUT {\"status\": \"active\"}",
            )
            .into());
        }
        let definition = self.validated(&caller, &body).await?;
        let view = self.insert_new(&caller, AgentType::Custom, &definition, None, None).await?;
        self.announce_change(&caller.org_id).await;
        self.respond_agent(&caller, &view).await
    }

    async fn update_agent_for(&self, caller: Caller, request: pb::UpdateAgentRequest) -> Result<pb::Agent> {
        caller.require(Permission::WriteAgents)?;
        let Value::Object(patch) = parse_json(&request.patch_json)? else {
            return Err(ApiError::bad_request("The update is a JSON object of the fields to change").into());
        };
        let current = self.view(&caller, &request.id).await?;
        let view = if current.agent_type == AgentType::System {
            self.update_system_agent(&caller, current.id.as_str(), &patch).await?
        } else {
            self.update_own_agent(&caller, current, patch).await?
        };
        self.announce_change(&caller.org_id).await;
        self.respond_agent(&caller, &view).await
    }

    async fn delete_agent_for(
        &self,
        caller: Caller,
        request: pb::DeleteAgentRequest,
    ) -> Result<pb::DeleteAgentResponse> {
        caller.require(Permission::WriteAgents)?;
        let current = self.view(&caller, &request.id).await?;
        if current.agent_type == AgentType::System {
            return Err(ApiError::forbidden(
                "System agents cannot be deleted; pause it for your org with {\"status\": \"paused\"}",
            )
            .into());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        if store::lock_own(&mut tx, &caller.org(), &current.id).await?.is_none() {
            return Err(agent_not_found(current.id.as_str(), &caller));
        }
        store::soft_delete(&mut tx, &caller.org(), &current.id).await?;
        // Its unfinished executions are cancelled (their gates denied) before the delete commits:
        // when that cannot be done, the agent stays and the caller may retry.
        self.cancel_executions_of(&caller, current.id.as_str()).await?;
        tx.commit().await?;
        self.announce_change(&caller.org_id).await;
        // An event matched in the moment before workers dropped the agent is cancelled too.
        if let Err(error) = self.cancel_executions_of(&caller, current.id.as_str()).await {
            tracing::warn!(agent_id = current.id.as_str(), %error, "cannot cancel late executions of a deleted agent");
        }
        Ok(pb::DeleteAgentResponse {})
    }

    async fn clone_agent_for(&self, caller: Caller, request: pb::CloneAgentRequest) -> Result<pb::Agent> {
        caller.require(Permission::WriteAgents)?;
        let source = self.view(&caller, &request.id).await?;
        let mut definition = source.definition.clone();
        definition.name = clone_name(&request.name, format!("{} (copy)", source.definition.name))?;
        let view =
            self.insert_new(&caller, AgentType::Cloned, &definition, Some(source.id.as_str()), None).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn list_agent_versions_for(
        &self,
        caller: Caller,
        request: pb::ListAgentVersionsRequest,
    ) -> Result<pb::ListAgentVersionsResponse> {
        caller.require(Permission::ReadAgents)?;
        let agent = self.view(&caller, &request.id).await?;
        let limit = request.page.map(|p| p.limit).filter(|l| *l > 0).unwrap_or(100).min(500);
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let versions = store::versions(&mut tx, &agent.id, i64::from(limit)).await?;
        tx.commit().await?;
        Ok(pb::ListAgentVersionsResponse {
            versions: versions
                .iter()
                .map(|v| pb::AgentVersion {
                    version: v.version as u32,
                    definition_json: convert::version_json(v).to_string(),
                    created_by: v.created_by.clone(),
                    created_at: v.created_at.to_rfc3339(),
                })
                .collect(),
        })
    }

    async fn list_templates_for(
        &self,
        caller: Caller,
        request: pb::ListTemplatesRequest,
    ) -> Result<pb::ListTemplatesResponse> {
        caller.require(Permission::ReadAgents)?;
        let category = request.category;
        one_of("category", &category, TemplateCategory::VARIANTS)?;
        let mut tx = self.pool.begin().await?;
        let templates = store::templates(&mut tx, &category).await?;
        tx.commit().await?;
        Ok(pb::ListTemplatesResponse {
            templates: templates
                .iter()
                .map(|t| pb::Template { template_json: convert::template_json(t).to_string() })
                .collect(),
        })
    }

    async fn clone_template_for(
        &self,
        caller: Caller,
        request: pb::CloneTemplateRequest,
    ) -> Result<pb::Agent> {
        caller.require(Permission::WriteAgents)?;
        let not_found =
            || ApiError::new(ErrorCode::TemplateNotFound, format!("Template {} not found", request.id));
        if !ids::has_prefix(&request.id, "tmpl") {
            return Err(not_found().into());
        }
        let mut tx = self.pool.begin().await?;
        let template = store::template(&mut tx, &request.id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        let mut definition = template.definition.clone();
        definition.name = clone_name(&request.name, template.name.clone())?;
        let view =
            self.insert_new(&caller, AgentType::Template, &definition, None, Some(&template.id)).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn fields_in_use_for(
        &self,
        caller: Caller,
        request: pb::FieldsInUseRequest,
    ) -> Result<pb::FieldsInUseResponse> {
        caller.require(Permission::WriteCatalog)?;
        let event_type_id = request.event_type_id;
        let mut tx = self.pool.begin().await?;
        let fields = store::fields_in_use(&mut tx, &event_type_id).await?;
        tx.commit().await?;
        Ok(pb::FieldsInUseResponse { fields })
    }

    async fn get_org_settings_for(
        &self,
        caller: Caller,
        _request: pb::GetOrgSettingsRequest,
    ) -> Result<pb::OrgSettingsMessage> {
        caller.require(Permission::WriteAgents)?;
        let settings = self.org_settings(&caller).await?;
        Ok(pb::OrgSettingsMessage { settings_json: settings.masked().to_string() })
    }

    async fn resolve_org_settings_for(
        &self,
        caller: Caller,
        _request: pb::GetOrgSettingsRequest,
    ) -> Result<pb::OrgSettingsMessage> {
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane reads an org's webhooks in full").into());
        }
        let settings = self.org_settings(&caller).await?;
        let json = serde_json::to_string(&settings).map_err(|e| ApiError::internal_from("settings", &e))?;
        Ok(pb::OrgSettingsMessage { settings_json: json })
    }

    async fn put_org_settings_for(
        &self,
        caller: Caller,
        request: pb::PutOrgSettingsRequest,
    ) -> Result<pb::OrgSettingsMessage> {
        caller.require(Permission::WriteAgents)?;
        let body = parse_json(&request.settings_json)?;
        let merged =
            update_org_settings(&self.pool, &caller.org_id, &body, &caller.principal_label()).await?;
        // Workers hold settings with the org's agents: the same announcement refreshes both.
        self.announce_change(&caller.org_id).await;
        Ok(pb::OrgSettingsMessage { settings_json: merged.masked().to_string() })
    }

    async fn list_schedules_for(
        &self,
        caller: Caller,
        _request: pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse> {
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane's scheduler lists schedules").into());
        }
        let mut tx = self.pool.begin().await?;
        let rows = store::schedules(&mut tx).await?;
        tx.commit().await?;
        Ok(pb::ListSchedulesResponse {
            schedules: rows
                .into_iter()
                .map(|r| pb::Schedule {
                    agent_id: r.agent_id.into_string(),
                    org_id: r.org_id.into_string(),
                    version: r.version,
                    cron: r.cron,
                    timezone: r.timezone,
                    definition_json: r.definition.to_string(),
                })
                .collect(),
        })
    }

    async fn record_run_for(
        &self,
        caller: Caller,
        request: pb::RecordRunRequest,
    ) -> Result<pb::RecordRunResponse> {
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane's engine records runs").into());
        }
        let run = request;
        let (runs, succeeded) = match run.runs {
            0 => (1, u64::from(run.succeeded)),
            runs => (runs, run.succeeded_runs.min(runs)),
        };
        let tally = store::RunTally {
            runs: i64::try_from(runs).unwrap_or(i64::MAX),
            succeeded: i64::try_from(succeeded).unwrap_or(i64::MAX),
            duration_ms: i64::try_from(run.duration_ms).unwrap_or(i64::MAX),
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        store::record_run(&mut tx, &caller.org(), &AgentId::from(run.agent_id.as_str()), &tally).await?;
        tx.commit().await?;
        Ok(pb::RecordRunResponse {})
    }
}

#[tonic::async_trait]
impl Agents for AgentsService {
    async fn list_agents(
        &self,
        request: tonic::Request<pb::ListAgentsRequest>,
    ) -> GrpcResult<pb::ListAgentsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list_agents_for(caller, request.into_inner()).await?))
    }

    async fn get_agent(&self, request: tonic::Request<pb::GetAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.get_agent_for(caller, request.into_inner()).await?))
    }

    async fn create_agent(&self, request: tonic::Request<pb::CreateAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.create_agent_for(caller, request.into_inner()).await?))
    }

    async fn update_agent(&self, request: tonic::Request<pb::UpdateAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.update_agent_for(caller, request.into_inner()).await?))
    }

    async fn delete_agent(
        &self,
        request: tonic::Request<pb::DeleteAgentRequest>,
    ) -> GrpcResult<pb::DeleteAgentResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.delete_agent_for(caller, request.into_inner()).await?))
    }

    async fn clone_agent(&self, request: tonic::Request<pb::CloneAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.clone_agent_for(caller, request.into_inner()).await?))
    }

    async fn list_agent_versions(
        &self,
        request: tonic::Request<pb::ListAgentVersionsRequest>,
    ) -> GrpcResult<pb::ListAgentVersionsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list_agent_versions_for(caller, request.into_inner()).await?))
    }

    async fn list_templates(
        &self,
        request: tonic::Request<pb::ListTemplatesRequest>,
    ) -> GrpcResult<pb::ListTemplatesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list_templates_for(caller, request.into_inner()).await?))
    }

    async fn clone_template(
        &self,
        request: tonic::Request<pb::CloneTemplateRequest>,
    ) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.clone_template_for(caller, request.into_inner()).await?))
    }

    async fn fields_in_use(
        &self,
        request: tonic::Request<pb::FieldsInUseRequest>,
    ) -> GrpcResult<pb::FieldsInUseResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.fields_in_use_for(caller, request.into_inner()).await?))
    }

    async fn get_org_settings(
        &self,
        request: tonic::Request<pb::GetOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.get_org_settings_for(caller, request.into_inner()).await?))
    }

    async fn resolve_org_settings(
        &self,
        request: tonic::Request<pb::GetOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.resolve_org_settings_for(caller, request.into_inner()).await?))
    }

    async fn put_org_settings(
        &self,
        request: tonic::Request<pb::PutOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.put_org_settings_for(caller, request.into_inner()).await?))
    }

    async fn list_schedules(
        &self,
        request: tonic::Request<pb::ListSchedulesRequest>,
    ) -> GrpcResult<pb::ListSchedulesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list_schedules_for(caller, request.into_inner()).await?))
    }

    async fn record_run(
        &self,
        request: tonic::Request<pb::RecordRunRequest>,
    ) -> GrpcResult<pb::RecordRunResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.record_run_for(caller, request.into_inner()).await?))
    }
}
