//! The executions service (`oneagents.executions.v1.Executions`): lists and reads executions with
//! their traces, cancels and retries them, and lists and replays dead-lettered events.
//!
//! Owns schema `executions`, shared with the worker, which writes executions and traces through
//! [`store`] as the engine of this context. It publishes work on the bus and touches no other
//! schema.

pub mod convert;
mod error;
pub mod gauges;
pub mod store;

pub use error::ExecutionsError;

use oa_bus::{Topology, WorkItem};
use oa_domain::ids::{AgentId, ExecutionId};
use oa_domain::status::ExecutionStatus;
use oa_domain::{ApiError, Caller, Permission, ids};
use oa_proto::approvals::DenyOpenGatesRequest;
use oa_proto::approvals::approvals_client::ApprovalsClient;
use oa_proto::executions as pb;
use oa_proto::executions::executions_server::{Executions, ExecutionsServer};
use oa_store::begin_org;
use oa_telemetry::metrics;
use secrecy::SecretString;
use sqlx::PgPool;
use strum::VariantNames;
use tonic::transport::Channel;

pub struct ExecutionsService {
    pool: PgPool,
    approvals: ApprovalsClient<Channel>,
    token: SecretString,
    jetstream: oa_bus::async_nats::jetstream::Context,
    topology: Topology,
}

pub type GuardedExecutions = tonic::service::interceptor::InterceptedService<
    ExecutionsServer<ExecutionsService>,
    oa_auth::service::ServiceGuard,
>;

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;
type Result<T, E = ExecutionsError> = std::result::Result<T, E>;

impl ExecutionsService {
    pub fn build(
        pool: PgPool,
        nats: oa_bus::async_nats::Client,
        config: &oa_config::Config,
    ) -> anyhow::Result<GuardedExecutions> {
        let endpoint = config.endpoint("approvals")?;
        let approvals = oa_auth::service::channel(endpoint, &config.grpc)
            .map_err(|e| anyhow::anyhow!("approvals endpoint: {e}"))?;
        let service = ExecutionsService {
            pool,
            approvals: ApprovalsClient::new(approvals),
            token: config.grpc.service_token.clone(),
            jetstream: oa_bus::async_nats::jetstream::new(nats),
            topology: Topology::new(&config.nats),
        };
        Ok(ExecutionsServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        ))
    }

    /// Denies the open gates of executions being cancelled, before the cancel commits: when the
    /// approvals service cannot be reached, nothing is cancelled and the caller may retry.
    async fn deny_gates(&self, caller: &Caller, execution_ids: &[String]) -> Result<()> {
        if execution_ids.is_empty() {
            return Ok(());
        }
        let request = DenyOpenGatesRequest {
            execution_ids: execution_ids.to_vec(),
            reason: format!("Execution cancelled by {}", caller.principal_label()),
        };
        // The plane denies them: the caller was allowed to cancel, which is what matters here.
        let plane = Caller::service("executions", &caller.org_id);
        self.approvals
            .clone()
            .deny_open_gates(oa_auth::service::outgoing(request, &plane, &self.token))
            .await
            .map_err(|status| oa_proto::status::api_error(&status))?;
        Ok(())
    }

    /// Cancels a locked execution inside `tx`: open steps skipped, gates denied, status cancelled.
    async fn cancel_locked(
        &self,
        tx: &mut sqlx::PgConnection,
        caller: &Caller,
        ids: &[String],
    ) -> Result<()> {
        let reason = serde_json::json!({
            "code": "cancelled",
            "message": format!("cancelled by {}", caller.principal_label()),
        });
        for id in ids {
            store::close_open_steps(
                tx,
                &ExecutionId::from(id.as_str()),
                oa_domain::status::StepStatus::Skipped,
            )
            .await?;
            store::set_status(tx, &ExecutionId::from(id.as_str()), ExecutionStatus::Cancelled, Some(&reason))
                .await?;
            metrics::counter!(metrics::EXECUTIONS_FINISHED, "role" => "executions", "status" => "cancelled")
                .increment(1);
        }
        // Queued work of a cancelled execution goes (a running one's ends with its run).
        store::dispatch::forget(tx, ids).await?;
        self.deny_gates(caller, ids).await
    }

    async fn detail(&self, caller: &Caller, id: &str) -> Result<pb::Execution> {
        let not_found = || ExecutionsError::NotFound(id.to_owned());
        if !ExecutionId::is_well_formed(id) {
            return Err(not_found());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let execution =
            store::get(&mut tx, &caller.org(), &ExecutionId::from(id)).await?.ok_or_else(not_found)?;
        let steps = store::steps(&mut tx, &execution).await?;
        tx.commit().await?;
        Ok(pb::Execution { execution_json: convert::detail_json(&execution, &steps).to_string() })
    }
}

impl ExecutionsService {
    /// Opens a transaction holding the execution locked, when its status is one of `allowed`;
    /// otherwise 409 naming what the control needs (`what`) and the status it found.
    async fn lock_in(
        &self,
        caller: &Caller,
        id: &str,
        allowed: &[ExecutionStatus],
        what: &'static str,
    ) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, store::ExecutionRow)> {
        let not_found = || ExecutionsError::NotFound(id.to_owned());
        if !ExecutionId::is_well_formed(id) {
            return Err(not_found());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let execution =
            store::lock(&mut tx, &caller.org(), &ExecutionId::from(id)).await?.ok_or_else(not_found)?;
        if !allowed.contains(&execution.status) {
            return Err(ExecutionsError::WrongStatus { what, status: execution.status });
        }
        Ok((tx, execution))
    }
}

fn parse_time(name: &str, value: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(value).map(|t| Some(t.with_timezone(&chrono::Utc))).map_err(|_| {
        ApiError::bad_request(format!("{name} must be an ISO 8601 date-time such as 2026-03-01T00:00:00Z"))
    })
}

/// The methods behind the gRPC handlers: each takes the resolved caller and returns the
/// service's error, which the handler maps once.
impl ExecutionsService {
    async fn list(
        &self,
        caller: Caller,
        request: pb::ListExecutionsRequest,
    ) -> Result<pb::ListExecutionsResponse> {
        caller.require(Permission::ReadExecutions)?;
        let status = match request.status.as_str() {
            "" => None,
            status => Some(status.parse::<ExecutionStatus>().map_err(|_| {
                ApiError::bad_request(format!(
                    "status must be one of {}",
                    ExecutionStatus::VARIANTS.join(", ")
                ))
            })?),
        };
        let page = request.page.unwrap_or_default();
        let limit = oa_domain::page::limit(page.limit)?;
        let filter = store::ListFilter {
            agent_id: &request.agent_id,
            status,
            from: parse_time("from", &request.from)?,
            to: parse_time("to", &request.to)?,
            cursor: &page.cursor,
            limit: i64::from(limit) + 1,
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let (mut rows, total) = store::list(&mut tx, &caller.org(), &filter).await?;
        tx.commit().await?;
        let next_cursor = oa_domain::page::cut(&mut rows, limit, |r| r.id.as_str());
        Ok(pb::ListExecutionsResponse {
            executions: rows
                .iter()
                .map(|r| pb::Execution { execution_json: convert::summary_json(r).to_string() })
                .collect(),
            page: Some(oa_proto::common::PageInfo { total: total as u64, next_cursor }),
        })
    }

    async fn get(&self, caller: Caller, request: pb::GetExecutionRequest) -> Result<pb::Execution> {
        caller.require(Permission::ReadExecutions)?;
        self.detail(&caller, &request.id).await
    }

    async fn cancel(&self, caller: Caller, request: pb::CancelExecutionRequest) -> Result<pb::Execution> {
        caller.require(Permission::ControlExecutions)?;
        let id = request.id;
        use ExecutionStatus::{Pending, Running, WaitingApproval};
        let allowed = [Pending, Running, WaitingApproval];
        let (mut tx, _) = self
            .lock_in(&caller, &id, &allowed, "Only a running or waiting execution can be cancelled")
            .await?;
        self.cancel_locked(&mut tx, &caller, std::slice::from_ref(&id)).await?;
        tx.commit().await?;
        self.detail(&caller, &id).await
    }

    async fn retry(&self, caller: Caller, request: pb::RetryExecutionRequest) -> Result<pb::Execution> {
        caller.require(Permission::ControlExecutions)?;
        let id = request.id;
        let (mut tx, original) = self
            .lock_in(
                &caller,
                &id,
                &[ExecutionStatus::Failed, ExecutionStatus::Cancelled],
                "Only a failed or cancelled execution can be retried",
            )
            .await?;
        let retry_id = ExecutionId::generate();
        let new = store::NewExecution {
            id: &retry_id,
            org_id: &caller.org(),
            agent_id: &original.agent_id,
            agent_version: original.agent_version,
            definition: &original.definition,
            event_id: &original.event_id,
            trigger_event: &original.trigger_event,
            retry_of: Some(&original.id),
        };
        store::insert(&mut tx, &new).await?;
        tx.commit().await?;
        let item = WorkItem { org_id: caller.org_id.clone(), execution_ids: vec![retry_id.to_string()] };
        oa_bus::publish_work(&self.jetstream, &self.topology, retry_id.as_str(), &item).await?;
        self.detail(&caller, retry_id.as_str()).await
    }

    async fn cancel_of_agent(
        &self,
        caller: Caller,
        request: pb::CancelExecutionsOfAgentRequest,
    ) -> Result<pb::CancelExecutionsOfAgentResponse> {
        caller.require(Permission::WriteAgents)?;
        let agent_id = request.agent_id;
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let ids = store::lock_unfinished_of_agent(&mut tx, &caller.org(), &AgentId::from(agent_id.as_str()))
            .await?;
        self.cancel_locked(&mut tx, &caller, &ids).await?;
        tx.commit().await?;
        if !ids.is_empty() {
            tracing::info!(agent_id, cancelled = ids.len(), "cancelled the executions of a deleted agent");
        }
        Ok(pb::CancelExecutionsOfAgentResponse { cancelled: ids.len() as u32 })
    }

    async fn dead_letters(
        &self,
        caller: Caller,
        request: pb::ListDeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse> {
        caller.require(Permission::ReadExecutions)?;
        let limit = match request.limit {
            0 => 50,
            limit => limit.min(200),
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let letters = store::dead_letters(&mut tx, &caller.org(), i64::from(limit)).await?;
        tx.commit().await?;
        Ok(pb::ListDeadLettersResponse {
            dead_letters: letters
                .iter()
                .map(|l| pb::DeadLetter { dead_letter_json: convert::dead_letter_json(l).to_string() })
                .collect(),
        })
    }

    async fn replay(&self, caller: Caller, request: pb::ReplayDeadLetterRequest) -> Result<pb::DeadLetter> {
        caller.require(Permission::ControlExecutions)?;
        let id = request.id;
        let missing = || ExecutionsError::DeadLetterNotFound(id.clone());
        if !ids::has_prefix(&id, "dlq") {
            return Err(missing());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let letter = store::lock_dead_letter(&mut tx, &caller.org(), &id).await?.ok_or_else(missing)?;
        // A fresh message id: the original was consumed, so JetStream must not drop the replay.
        let message_id = format!("replay_{}_{}", letter.id, ids::new_id("r"));
        oa_bus::publish_raw(
            &self.jetstream,
            letter.subject.clone(),
            &message_id,
            letter.payload.clone().into_bytes().into(),
        )
        .await?;
        store::mark_replayed(&mut tx, &letter.id).await?;
        let letter = store::lock_dead_letter(&mut tx, &caller.org(), &id).await?.ok_or_else(missing)?;
        tx.commit().await?;
        Ok(pb::DeadLetter { dead_letter_json: convert::dead_letter_json(&letter).to_string() })
    }
}

#[tonic::async_trait]
impl Executions for ExecutionsService {
    async fn list_executions(
        &self,
        request: tonic::Request<pb::ListExecutionsRequest>,
    ) -> GrpcResult<pb::ListExecutionsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list(caller, request.into_inner()).await?))
    }

    async fn get_execution(
        &self,
        request: tonic::Request<pb::GetExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.get(caller, request.into_inner()).await?))
    }

    async fn cancel_execution(
        &self,
        request: tonic::Request<pb::CancelExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.cancel(caller, request.into_inner()).await?))
    }

    async fn retry_execution(
        &self,
        request: tonic::Request<pb::RetryExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.retry(caller, request.into_inner()).await?))
    }

    async fn cancel_executions_of_agent(
        &self,
        request: tonic::Request<pb::CancelExecutionsOfAgentRequest>,
    ) -> GrpcResult<pb::CancelExecutionsOfAgentResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.cancel_of_agent(caller, request.into_inner()).await?))
    }

    async fn list_dead_letters(
        &self,
        request: tonic::Request<pb::ListDeadLettersRequest>,
    ) -> GrpcResult<pb::ListDeadLettersResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.dead_letters(caller, request.into_inner()).await?))
    }

    async fn replay_dead_letter(
        &self,
        request: tonic::Request<pb::ReplayDeadLetterRequest>,
    ) -> GrpcResult<pb::DeadLetter> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.replay(caller, request.into_inner()).await?))
    }
}
