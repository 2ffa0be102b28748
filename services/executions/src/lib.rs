//! The executions service (`oneagents.executions.v1.Executions`): lists and reads executions with
//! their traces, cancels and retries them, and lists and replays dead-lettered events.
//!
//! Owns schema `executions`, shared with the worker, which writes executions and traces through
//! [`store`] as the engine of this context. It publishes work on the bus and touches no other
//! schema.

pub mod convert;
pub mod store;

use oa_bus::{Topology, WorkItem};
use oa_domain::{ApiError, Caller, ErrorCode, Permission, ids};
use oa_proto::executions as pb;
use oa_proto::executions::executions_server::{Executions, ExecutionsServer};
use oa_store::{StoreError, begin_org};
use sqlx::PgPool;

pub struct ExecutionsService {
    pool: PgPool,
    jetstream: oa_bus::async_nats::jetstream::Context,
    topology: Topology,
}

pub type GuardedExecutions = tonic::service::interceptor::InterceptedService<
    ExecutionsServer<ExecutionsService>,
    oa_auth::service::ServiceGuard,
>;

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;

fn db(error: sqlx::Error) -> ApiError {
    ApiError::from(StoreError::Database(error))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::ExecutionNotFound, format!("Execution {id} not found"))
}

fn bus_error(error: oa_bus::BusError) -> ApiError {
    tracing::error!(%error, "cannot publish on the bus");
    ApiError::unavailable("event bus")
}

impl ExecutionsService {
    pub fn build(
        pool: PgPool,
        nats: oa_bus::async_nats::Client,
        config: &oa_config::Config,
    ) -> GuardedExecutions {
        let service = ExecutionsService {
            pool,
            jetstream: oa_bus::async_nats::jetstream::new(nats),
            topology: Topology::new(&config.nats),
        };
        ExecutionsServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        )
    }

    async fn detail(&self, caller: &Caller, id: &str) -> Result<pb::Execution, ApiError> {
        if !ids::has_prefix(id, "exec") {
            return Err(not_found(id));
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let execution =
            store::get(&mut tx, &caller.org_id, id).await.map_err(db)?.ok_or_else(|| not_found(id))?;
        let steps = store::steps(&mut tx, id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
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
        allowed: &[&str],
        what: &str,
    ) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, store::ExecutionRow), ApiError> {
        if !ids::has_prefix(id, "exec") {
            return Err(not_found(id));
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let execution =
            store::lock(&mut tx, &caller.org_id, id).await.map_err(db)?.ok_or_else(|| not_found(id))?;
        if !allowed.contains(&execution.status.as_str()) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{what}; this one is {}", execution.status),
            ));
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

#[tonic::async_trait]
impl Executions for ExecutionsService {
    async fn list_executions(
        &self,
        request: tonic::Request<pb::ListExecutionsRequest>,
    ) -> GrpcResult<pb::ListExecutionsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadExecutions)?;
        let request = request.into_inner();
        const STATUSES: [&str; 6] =
            ["pending", "running", "waiting_approval", "completed", "failed", "cancelled"];
        if !request.status.is_empty() && !STATUSES.contains(&request.status.as_str()) {
            return Err(
                ApiError::bad_request(format!("status must be one of {}", STATUSES.join(", "))).into()
            );
        }
        let page = request.page.unwrap_or_default();
        let limit = match page.limit {
            0 => 50,
            1..=200 => page.limit,
            _ => return Err(ApiError::bad_request("limit must be between 1 and 200").into()),
        };
        let filter = store::ListFilter {
            agent_id: &request.agent_id,
            status: &request.status,
            from: parse_time("from", &request.from)?,
            to: parse_time("to", &request.to)?,
            cursor: &page.cursor,
            limit: i64::from(limit) + 1,
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        let (mut rows, total) = store::list(&mut tx, &caller.org_id, &filter).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor =
            if more { rows.last().map(|r| r.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(tonic::Response::new(pb::ListExecutionsResponse {
            executions: rows
                .iter()
                .map(|r| pb::Execution { execution_json: convert::summary_json(r).to_string() })
                .collect(),
            page: Some(oa_proto::common::PageInfo { total: total as u64, next_cursor }),
        }))
    }

    async fn get_execution(
        &self,
        request: tonic::Request<pb::GetExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadExecutions)?;
        Ok(tonic::Response::new(self.detail(&caller, &request.into_inner().id).await?))
    }

    async fn cancel_execution(
        &self,
        request: tonic::Request<pb::CancelExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ControlExecutions)?;
        let id = request.into_inner().id;
        let allowed = ["pending", "running", "waiting_approval"];
        let (mut tx, _) = self
            .lock_in(&caller, &id, &allowed, "Only a running or waiting execution can be cancelled")
            .await?;
        store::close_open_steps(&mut tx, &id, "skipped").await.map_err(db)?;
        let reason = serde_json::json!({"code": "cancelled", "message": format!("cancelled by {}", caller.principal_label())});
        store::set_status(&mut tx, &id, "cancelled", Some(&reason)).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(self.detail(&caller, &id).await?))
    }

    async fn retry_execution(
        &self,
        request: tonic::Request<pb::RetryExecutionRequest>,
    ) -> GrpcResult<pb::Execution> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ControlExecutions)?;
        let id = request.into_inner().id;
        let (mut tx, original) = self
            .lock_in(
                &caller,
                &id,
                &["failed", "cancelled"],
                "Only a failed or cancelled execution can be retried",
            )
            .await?;
        let retry_id = ids::new_id("exec");
        let new = store::NewExecution {
            id: &retry_id,
            org_id: &caller.org_id,
            agent_id: &original.agent_id,
            agent_version: original.agent_version,
            definition: &original.definition,
            event_id: &original.event_id,
            trigger_event: &original.trigger_event,
            retry_of: Some(&original.id),
        };
        store::insert(&mut tx, &new).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        let item = WorkItem { org_id: caller.org_id.clone(), execution_ids: vec![retry_id.clone()] };
        oa_bus::publish_work(&self.jetstream, &self.topology, &retry_id, &item).await.map_err(bus_error)?;
        Ok(tonic::Response::new(self.detail(&caller, &retry_id).await?))
    }

    async fn list_dead_letters(
        &self,
        request: tonic::Request<pb::ListDeadLettersRequest>,
    ) -> GrpcResult<pb::ListDeadLettersResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ReadExecutions)?;
        let limit = match request.into_inner().limit {
            0 => 50,
            limit => limit.min(200),
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        let letters = store::dead_letters(&mut tx, &caller.org_id, i64::from(limit)).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters
                .iter()
                .map(|l| pb::DeadLetter { dead_letter_json: convert::dead_letter_json(l).to_string() })
                .collect(),
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: tonic::Request<pb::ReplayDeadLetterRequest>,
    ) -> GrpcResult<pb::DeadLetter> {
        let caller = oa_auth::service::caller_of(&request)?;
        caller.require(Permission::ControlExecutions)?;
        let id = request.into_inner().id;
        let missing = || ApiError::new(ErrorCode::NotFound, format!("Dead letter {id} not found"));
        if !ids::has_prefix(&id, "dlq") {
            return Err(missing().into());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await.map_err(ApiError::from)?;
        let letter =
            store::lock_dead_letter(&mut tx, &caller.org_id, &id).await.map_err(db)?.ok_or_else(missing)?;
        // A fresh message id: the original was consumed, so JetStream must not drop the replay.
        let message_id = format!("replay_{}_{}", letter.id, ids::new_id("r"));
        oa_bus::publish_raw(
            &self.jetstream,
            letter.subject.clone(),
            &message_id,
            letter.payload.clone().into_bytes().into(),
        )
        .await
        .map_err(bus_error)?;
        store::mark_replayed(&mut tx, &letter.id).await.map_err(db)?;
        let letter =
            store::lock_dead_letter(&mut tx, &caller.org_id, &id).await.map_err(db)?.ok_or_else(missing)?;
        tx.commit().await.map_err(db)?;
        Ok(tonic::Response::new(pb::DeadLetter {
            dead_letter_json: convert::dead_letter_json(&letter).to_string(),
        }))
    }
}
