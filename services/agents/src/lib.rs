//! The agents service (`oneagents.agents.v1.Agents`): an org's agents and their versions, the
//! system agents every org sees (with each org's own paused/active override), templates, and the
//! active-agent cap of the org's tier.
//!
//! Owns schema `agents`. It validates definitions against the event catalog through the catalog
//! service and touches no other schema.

mod convert;
mod seed;
pub mod store;
pub mod validate;

use std::collections::HashMap;

use oa_domain::agent::{AgentDefinition, AgentStatus, AgentType, TemplateCategory};
use oa_domain::catalog::EVENT_CATEGORIES;
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
    let mut tx = begin_org(pool, org_id).await?;
    let merged = store::org_settings(&mut tx, org_id).await.map_err(db)?.merged(update, &sections);
    store::put_org_settings(&mut tx, org_id, &merged, updated_by).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(merged)
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

use oa_store::api_error as db;

fn agent_not_found(id: &str, caller: &Caller) -> ApiError {
    // The same body for a missing id and another org's: ids cannot be probed.
    ApiError::new(ErrorCode::AgentNotFound, format!("Agent {id} not found in org {}", caller.org_id))
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
    async fn cancel_executions_of(&self, caller: &Caller, agent_id: &str) -> Result<(), ApiError> {
        let request = oa_proto::executions::CancelExecutionsOfAgentRequest { agent_id: agent_id.to_owned() };
        self.executions
            .clone()
            .cancel_executions_of_agent(oa_auth::service::outgoing(request, caller, &self.service_token))
            .await
            .map_err(|status| ApiError::from_status(&status))?;
        Ok(())
    }

    async fn respond_agent(&self, caller: &Caller, view: &store::AgentView) -> GrpcResult<pb::Agent> {
        let used = credits_by_agent(self, caller).await.get(&view.id).copied().unwrap_or(0);
        Ok(tonic::Response::new(pb::Agent { agent_json: convert::agent_json(view, used).to_string() }))
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
    ) -> Result<GuardedAgents, ApiError> {
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
    ) -> Result<HashMap<String, oa_domain::catalog::EventType>, ApiError> {
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

    async fn validated(&self, caller: &Caller, definition: &Value) -> Result<AgentDefinition, ApiError> {
        let catalog = self.event_types_for(caller, definition).await?;
        let tier = self.tiers.get(&caller.tier).unwrap_or(&self.tiers.starter);
        validate::validate_within(definition, &catalog, validate::Limits::of_tier(tier)).map_err(invalid)
    }

    async fn org_settings(&self, caller: &Caller) -> Result<OrgSettings, ApiError> {
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let settings = store::org_settings(&mut tx, &caller.org_id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
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

    async fn view(&self, caller: &Caller, id: &str) -> Result<store::AgentView, ApiError> {
        if !ids::has_prefix(id, "agent") {
            return Err(agent_not_found(id, caller));
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let view = store::get(&mut tx, &caller.org_id, id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        view.ok_or_else(|| agent_not_found(id, caller))
    }

    async fn insert_new(
        &self,
        caller: &Caller,
        agent_type: AgentType,
        definition: &AgentDefinition,
        cloned_from: Option<&str>,
        template_id: Option<&str>,
    ) -> Result<store::AgentView, ApiError> {
        let id = ids::new_id("agent");
        let created_by = caller.principal_label();
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let held = store::count_for_create(&mut tx, &caller.org_id).await.map_err(db)?;
        let cap = self.tiers.get(&caller.tier).unwrap_or(&self.tiers.starter).max_agents;
        if held >= i64::from(cap) {
            return Err(ApiError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "The org holds {held} agent definitions, the most its tier allows ({cap}); delete some first"
                ),
            ));
        }
        let new = store::NewAgent {
            id: &id,
            org_id: &caller.org_id,
            agent_type,
            definition,
            cloned_from,
            template_id,
            created_by: &created_by,
        };
        store::insert(&mut tx, &new).await.map_err(db)?;
        let view = store::get(&mut tx, &caller.org_id, &id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        view.ok_or_else(|| ApiError::internal_from("agents", &"a created agent could not be read back"))
    }

    /// A system agent accepts only the org's own pause or resume.
    async fn update_system_agent(
        &self,
        caller: &Caller,
        id: &str,
        patch: &Map<String, Value>,
    ) -> Result<store::AgentView, ApiError> {
        let status = match (patch.len(), patch.get("status").and_then(Value::as_str)) {
            (1, Some("active")) => AgentStatus::Active,
            (1, Some("paused")) => AgentStatus::Paused,
            _ => {
                return Err(ApiError::forbidden(
                    "System agents cannot be modified; pause or resume it with {\"status\": \"paused\"}, or clone it",
                ));
            }
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        store::set_override(&mut tx, &caller.org_id, id, status, &caller.principal_label())
            .await
            .map_err(db)?;
        let view = store::get(&mut tx, &caller.org_id, id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        view.ok_or_else(|| agent_not_found(id, caller))
    }

    async fn update_own_agent(
        &self,
        caller: &Caller,
        current: store::AgentView,
        patch: Map<String, Value>,
    ) -> Result<store::AgentView, ApiError> {
        if patch.is_empty() {
            return Err(invalid_at("", "the update changes nothing; send the fields to change"));
        }
        let new_status = match patch.get("status") {
            None => current.status,
            Some(Value::String(s)) if matches!(s.as_str(), "draft" | "active" | "paused") => {
                s.parse().map_err(|_| invalid_at("status", "status is draft, active or paused"))?
            }
            Some(_) => return Err(invalid_at("status", "status is draft, active or paused")),
        };
        let mut merged = match serde_json::to_value(&current.definition) {
            Ok(Value::Object(map)) => map,
            _ => return Err(ApiError::internal_from("agents", &"a stored definition is not an object")),
        };
        for (key, value) in patch {
            if key != "status" {
                merged.insert(key, value);
            }
        }
        let definition = self.validated(caller, &Value::Object(merged)).await?;

        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let Some((stored_status, stored_version)) =
            store::lock_own(&mut tx, &caller.org_id, &current.id).await.map_err(db)?
        else {
            return Err(agent_not_found(&current.id, caller));
        };
        if stored_version != current.version {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "The agent changed while this update was prepared; retry it",
            ));
        }
        if new_status == AgentStatus::Active && stored_status != AgentStatus::Active {
            store::lock_org_activations(&mut tx, &caller.org_id).await.map_err(db)?;
            let active = store::count_active(&mut tx, &caller.org_id, &current.id).await.map_err(db)?;
            let cap = self.active_agent_cap(caller);
            if active >= i64::from(cap) {
                return Err(ApiError::new(
                    ErrorCode::AgentLimitReached,
                    format!(
                        "The org already has {active} active agents, the limit of its {} tier",
                        caller.tier
                    ),
                ));
            }
        }
        let by = caller.principal_label();
        store::update(&mut tx, &caller.org_id, &current.id, new_status, &definition, stored_version + 1, &by)
            .await
            .map_err(db)?;
        let view = store::get(&mut tx, &caller.org_id, &current.id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        view.ok_or_else(|| agent_not_found(&current.id, caller))
    }
}

#[tonic::async_trait]
impl Agents for AgentsService {
    async fn list_agents(
        &self,
        request: tonic::Request<pb::ListAgentsRequest>,
    ) -> GrpcResult<pb::ListAgentsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadAgents)?;
        let filter = request.into_inner();
        one_of("status", &filter.status, AgentStatus::VARIANTS)?;
        one_of("type", &filter.r#type, AgentType::VARIANTS)?;
        one_of("category", &filter.category, &EVENT_CATEGORIES)?;
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        let list_filter = store::ListFilter {
            status: &filter.status,
            agent_type: &filter.r#type,
            category: &filter.category,
        };
        let views = store::list(&mut tx, &caller.org_id, &list_filter).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        // The worker's index asks for active agents only; it needs no stats.
        let used = if matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            HashMap::new()
        } else {
            credits_by_agent(self, &caller).await
        };
        Ok(tonic::Response::new(pb::ListAgentsResponse {
            total: views.len() as u64,
            agents: views
                .iter()
                .map(|v| pb::Agent {
                    agent_json: convert::agent_json(v, used.get(&v.id).copied().unwrap_or(0)).to_string(),
                })
                .collect(),
        }))
    }

    async fn get_agent(&self, request: tonic::Request<pb::GetAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadAgents)?;
        let view = self.view(&caller, &request.into_inner().id).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn create_agent(&self, request: tonic::Request<pb::CreateAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let body = parse_json(&request.into_inner().definition_json)?;
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

    async fn update_agent(&self, request: tonic::Request<pb::UpdateAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let request = request.into_inner();
        let Value::Object(patch) = parse_json(&request.patch_json)? else {
            return Err(ApiError::bad_request("The update is a JSON object of the fields to change").into());
        };
        let current = self.view(&caller, &request.id).await?;
        let view = if current.agent_type == AgentType::System {
            self.update_system_agent(&caller, &current.id, &patch).await?
        } else {
            self.update_own_agent(&caller, current, patch).await?
        };
        self.announce_change(&caller.org_id).await;
        self.respond_agent(&caller, &view).await
    }

    async fn delete_agent(
        &self,
        request: tonic::Request<pb::DeleteAgentRequest>,
    ) -> GrpcResult<pb::DeleteAgentResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let current = self.view(&caller, &request.into_inner().id).await?;
        if current.agent_type == AgentType::System {
            return Err(ApiError::forbidden(
                "System agents cannot be deleted; pause it for your org with {\"status\": \"paused\"}",
            )
            .into());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        if store::lock_own(&mut tx, &caller.org_id, &current.id).await.map_err(db)?.is_none() {
            return Err(agent_not_found(&current.id, &caller).into());
        }
        store::soft_delete(&mut tx, &caller.org_id, &current.id).await.map_err(db)?;
        // Its unfinished executions are cancelled (their gates denied) before the delete commits:
        // when that cannot be done, the agent stays and the caller may retry.
        self.cancel_executions_of(&caller, &current.id).await?;
        tx.commit().await.map_err(db)?;
        self.announce_change(&caller.org_id).await;
        // An event matched in the moment before workers dropped the agent is cancelled too.
        if let Err(error) = self.cancel_executions_of(&caller, &current.id).await {
            tracing::warn!(agent_id = current.id, %error, "cannot cancel late executions of a deleted agent");
        }
        Ok(tonic::Response::new(pb::DeleteAgentResponse {}))
    }

    async fn clone_agent(&self, request: tonic::Request<pb::CloneAgentRequest>) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let request = request.into_inner();
        let source = self.view(&caller, &request.id).await?;
        let mut definition = source.definition.clone();
        definition.name = clone_name(&request.name, format!("{} (copy)", source.definition.name))?;
        let view = self.insert_new(&caller, AgentType::Cloned, &definition, Some(&source.id), None).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn list_agent_versions(
        &self,
        request: tonic::Request<pb::ListAgentVersionsRequest>,
    ) -> GrpcResult<pb::ListAgentVersionsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadAgents)?;
        let request = request.into_inner();
        let agent = self.view(&caller, &request.id).await?;
        let limit = request.page.map(|p| p.limit).filter(|l| *l > 0).unwrap_or(100).min(500);
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        let versions = store::versions(&mut tx, &agent.id, i64::from(limit)).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::ListAgentVersionsResponse {
            versions: versions
                .iter()
                .map(|v| pb::AgentVersion {
                    version: v.version as u32,
                    definition_json: convert::version_json(v).to_string(),
                    created_by: v.created_by.clone(),
                    created_at: v.created_at.to_rfc3339(),
                })
                .collect(),
        }))
    }

    async fn list_templates(
        &self,
        request: tonic::Request<pb::ListTemplatesRequest>,
    ) -> GrpcResult<pb::ListTemplatesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadAgents)?;
        let category = request.into_inner().category;
        one_of("category", &category, TemplateCategory::VARIANTS)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let templates = store::templates(&mut tx, &category).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::ListTemplatesResponse {
            templates: templates
                .iter()
                .map(|t| pb::Template { template_json: convert::template_json(t).to_string() })
                .collect(),
        }))
    }

    async fn clone_template(
        &self,
        request: tonic::Request<pb::CloneTemplateRequest>,
    ) -> GrpcResult<pb::Agent> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let request = request.into_inner();
        let not_found =
            || ApiError::new(ErrorCode::TemplateNotFound, format!("Template {} not found", request.id));
        if !ids::has_prefix(&request.id, "tmpl") {
            return Err(not_found().into());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let template = store::template(&mut tx, &request.id).await.map_err(db)?.ok_or_else(not_found)?;
        tx.commit().await.map_err(db)?;
        let mut definition = template.definition.clone();
        definition.name = clone_name(&request.name, template.name.clone())?;
        let view =
            self.insert_new(&caller, AgentType::Template, &definition, None, Some(&template.id)).await?;
        self.respond_agent(&caller, &view).await
    }

    async fn fields_in_use(
        &self,
        request: tonic::Request<pb::FieldsInUseRequest>,
    ) -> GrpcResult<pb::FieldsInUseResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteCatalog)?;
        let event_type_id = request.into_inner().event_type_id;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let fields = store::fields_in_use(&mut tx, &event_type_id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::FieldsInUseResponse { fields }))
    }

    async fn get_org_settings(
        &self,
        request: tonic::Request<pb::GetOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let settings = self.org_settings(&caller).await?;
        Ok(tonic::Response::new(pb::OrgSettingsMessage { settings_json: settings.masked().to_string() }))
    }

    async fn resolve_org_settings(
        &self,
        request: tonic::Request<pb::GetOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane reads an org's webhooks in full").into());
        }
        let settings = self.org_settings(&caller).await?;
        let json = serde_json::to_string(&settings).map_err(|e| ApiError::internal_from("settings", &e))?;
        Ok(tonic::Response::new(pb::OrgSettingsMessage { settings_json: json }))
    }

    async fn put_org_settings(
        &self,
        request: tonic::Request<pb::PutOrgSettingsRequest>,
    ) -> GrpcResult<pb::OrgSettingsMessage> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::WriteAgents)?;
        let body = parse_json(&request.into_inner().settings_json)?;
        let merged =
            update_org_settings(&self.pool, &caller.org_id, &body, &caller.principal_label()).await?;
        // Workers hold settings with the org's agents: the same announcement refreshes both.
        self.announce_change(&caller.org_id).await;
        Ok(tonic::Response::new(pb::OrgSettingsMessage { settings_json: merged.masked().to_string() }))
    }

    async fn list_schedules(
        &self,
        request: tonic::Request<pb::ListSchedulesRequest>,
    ) -> GrpcResult<pb::ListSchedulesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane's scheduler lists schedules").into());
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let rows = store::schedules(&mut tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::ListSchedulesResponse {
            schedules: rows
                .into_iter()
                .map(|r| pb::Schedule {
                    agent_id: r.agent_id,
                    org_id: r.org_id,
                    version: r.version,
                    cron: r.cron,
                    timezone: r.timezone,
                    definition_json: r.definition.to_string(),
                })
                .collect(),
        }))
    }

    async fn record_run(
        &self,
        request: tonic::Request<pb::RecordRunRequest>,
    ) -> GrpcResult<pb::RecordRunResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        if !matches!(caller.principal, oa_domain::Principal::Service { .. }) {
            return Err(ApiError::forbidden("Only the plane's engine records runs").into());
        }
        let run = request.into_inner();
        let duration_ms = i64::try_from(run.duration_ms).unwrap_or(i64::MAX);
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        store::record_run(&mut tx, &caller.org_id, &run.agent_id, run.succeeded, duration_ms)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::RecordRunResponse {}))
    }
}
