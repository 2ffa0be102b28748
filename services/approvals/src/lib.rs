//! The approvals service (`oneagents.approvals.v1.Approvals`): the gates that pause executions at
//! their approval steps, each with exactly one decision (a user with an allowed role, a key with
//! `approvals:decide`, a signed link, the expiry sweeper or a cancel), and an append-only audit.
//!
//! A decision wakes the execution through the work stream: the gate row carries a version and the
//! version last published, so a decision committed but not yet published (a crash in between, the
//! bus down) is published by the [`sweeper`] instead of being lost.
//!
//! Owns schema `approvals` and touches no other.

mod error;
pub mod store;
pub mod sweeper;

pub use error::ApprovalsError;

use oa_telemetry::metrics;
use std::collections::HashMap;
use strum::VariantNames;

use oa_bus::{Topology, WorkItem};
use oa_domain::ids::{AgentId, ExecutionId, GateId};
use oa_domain::status::{DecidedVia, GateAction, GateActor, GateStatus};
use oa_domain::{ApiError, Caller, ErrorCode, Permission, Principal};
use oa_proto::approvals as pb;
use oa_proto::approvals::approvals_server::{Approvals, ApprovalsServer};
use oa_store::begin_org;
use secrecy::SecretString;
use sqlx::PgPool;

const MAX_NOTE: usize = 2000;

/// What the service and its sweeper share.
#[derive(Clone)]
pub struct Shared {
    pub pool: PgPool,
    pub jetstream: oa_bus::async_nats::jetstream::Context,
    pub topology: Topology,
    pub config: oa_config::ApprovalsConfig,
}

pub struct ApprovalsService {
    shared: Shared,
}

pub type GuardedApprovals = tonic::service::interceptor::InterceptedService<
    ApprovalsServer<ApprovalsService>,
    oa_auth::service::ServiceGuard,
>;

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;
type Result<T, E = ApprovalsError> = std::result::Result<T, E>;

fn not_found(id: &str) -> ApprovalsError {
    ApprovalsError::NotFound(id.to_owned())
}

fn engine_only(caller: &Caller) -> Result<()> {
    match caller.principal {
        Principal::Service { .. } => Ok(()),
        _ => Err(ApprovalsError::EngineOnly),
    }
}

fn reply(gate: &store::Gate) -> pb::Approval {
    pb::Approval { approval_json: gate.to_json().to_string() }
}

/// Why a decided or expired gate takes no further decision.
fn already_closed(gate: &store::Gate) -> ApiError {
    let by = gate.decided_by.as_deref().unwrap_or("unknown");
    let at = gate.decided_at.as_ref().map(store::time).unwrap_or_default();
    let message = match gate.decided_via.as_deref() {
        Some("cancel") => format!("This approval was denied when its execution was cancelled ({at})"),
        Some("timeout") => format!("This approval expired at {at}"),
        _ => format!("This approval was already {} by {by} at {at}", gate.status),
    };
    ApiError::new(ErrorCode::Conflict, message).with_details(serde_json::json!({
        "status": gate.status,
        "decided_by": gate.decided_by,
        "decided_at": at,
    }))
}

impl Shared {
    /// Wakes the gate's execution on the work stream, then records that it did. A failure leaves
    /// the gate lagging; the sweeper publishes it again.
    pub async fn publish(&self, gate: &store::Gate) {
        let item =
            WorkItem { org_id: gate.org_id.to_string(), execution_ids: vec![gate.execution_id.to_string()] };
        let dedup = format!("{}_v{}", gate.id, gate.version);
        if let Err(error) = oa_bus::publish_work(&self.jetstream, &self.topology, &dedup, &item).await {
            tracing::warn!(%error, approval_id = gate.id.as_str(), "cannot wake the execution yet; the sweeper retries");
            return;
        }
        let marked = async {
            let mut tx = begin_org(&self.pool, gate.org_id.as_str()).await?;
            store::mark_published(&mut tx, &gate.id, gate.version).await?;
            tx.commit().await?;
            Ok::<_, oa_store::StoreError>(())
        };
        if let Err(error) = marked.await {
            // Harmless: the republish is dropped by the stream's dedup window or finds nothing to do.
            tracing::warn!(%error, approval_id = gate.id.as_str(), "published, but cannot record it");
        }
    }
}

impl ApprovalsService {
    /// The service over `shared`, which the process's [`sweeper`] uses too.
    pub fn build(shared: Shared, config: &oa_config::Config) -> GuardedApprovals {
        let service = ApprovalsService { shared };
        ApprovalsServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        )
    }

    fn secret(&self) -> &SecretString {
        &self.shared.config.link_secret
    }
}

impl Shared {
    pub fn new(pool: PgPool, nats: oa_bus::async_nats::Client, config: &oa_config::Config) -> Shared {
        Shared {
            pool,
            jetstream: oa_bus::async_nats::jetstream::new(nats),
            topology: Topology::new(&config.nats),
            config: config.approvals.clone(),
        }
    }
}

/// Who is deciding: the audit's actor and principal type.
struct Decider {
    actor: String,
    kind: GateActor,
    via: DecidedVia,
    /// A user's role, checked against the gate's approvers.
    role: Option<&'static str>,
}

/// The methods behind the gRPC handlers: each takes the resolved caller and returns the
/// service's error, which the handler maps once.
impl ApprovalsService {
    async fn open(&self, caller: Caller, request: pb::OpenGateRequest) -> Result<pb::Approval> {
        engine_only(&caller)?;
        if request.approvers.is_empty() || request.expires_in_seconds == 0 {
            return Err(ApiError::bad_request("a gate needs approvers and an expiry").into());
        }
        if !matches!(request.on_timeout.as_str(), "deny" | "approve" | "escalate") {
            return Err(ApiError::bad_request("on_timeout is deny, approve or escalate").into());
        }
        let id = GateId::generate();
        let expires_in_secs =
            i64::try_from(request.expires_in_seconds).unwrap_or(i64::MAX / 4).min(86_400 * 365);
        let new = store::NewGate {
            id: &id,
            org_id: &caller.org(),
            execution_id: &ExecutionId::from(request.execution_id.as_str()),
            agent_id: &AgentId::from(request.agent_id.as_str()),
            step_id: &request.step_id,
            message: &request.message,
            approvers: &request.approvers,
            on_timeout: &request.on_timeout,
            escalate_to: Some(request.escalate_to.as_str()).filter(|r| !r.is_empty()),
            expires_in_secs,
        };
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let (gate, created) = store::open(&mut tx, &new).await?;
        tx.commit().await?;
        if created {
            metrics::counter!(metrics::APPROVALS_OPENED, "role" => "approvals").increment(1);
            tracing::info!(
                approval_id = gate.id.as_str(),
                execution_id = gate.execution_id.as_str(),
                "approval gate opened"
            );
        }
        Ok(reply(&gate))
    }

    async fn list(
        &self,
        caller: Caller,
        request: pb::ListApprovalsRequest,
    ) -> Result<pb::ListApprovalsResponse> {
        caller.require(Permission::ReadApprovals)?;
        // The reference lists pending gates; `all` lists every status.
        let status = match request.status.as_str() {
            "" => "pending",
            "all" => "",
            status if oa_domain::status::GateStatus::VARIANTS.contains(&status) => status,
            _ => {
                let allowed = format!(
                    "status must be one of {} or all",
                    oa_domain::status::GateStatus::VARIANTS.join(", ")
                );
                return Err(ApiError::bad_request(allowed).into());
            }
        };
        let page = request.page.unwrap_or_default();
        let limit = oa_domain::page::limit(page.limit)?;
        if !page.cursor.is_empty() && !GateId::is_well_formed(&page.cursor) {
            return Err(ApiError::bad_request("cursor is the next_cursor of a previous page").into());
        }
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let (mut gates, total) =
            store::list(&mut tx, &caller.org(), status, &page.cursor, i64::from(limit) + 1).await?;
        tx.commit().await?;
        let next_cursor = oa_domain::page::cut(&mut gates, limit, |g| g.id.as_str());
        Ok(pb::ListApprovalsResponse {
            approvals: gates
                .iter()
                .map(|g| pb::Approval { approval_json: g.to_json().to_string() })
                .collect(),
            page: Some(oa_proto::common::PageInfo { total: total as u64, next_cursor }),
        })
    }

    async fn get(&self, caller: Caller, request: pb::GetApprovalRequest) -> Result<pb::Approval> {
        caller.require(Permission::ReadApprovals)?;
        let id = request.id;
        if !GateId::is_well_formed(&id) {
            return Err(not_found(&id));
        }
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let gate = store::get(&mut tx, &caller.org(), &GateId::from(id.as_str()))
            .await?
            .ok_or_else(|| not_found(&id))?;
        let history = store::history(&mut tx, &GateId::from(id.as_str())).await?;
        tx.commit().await?;
        let mut record = gate.to_json();
        record["history"] = serde_json::Value::Array(history);
        Ok(pb::Approval { approval_json: record.to_string() })
    }

    async fn decide_for(&self, caller: Caller, request: pb::DecideRequest) -> Result<pb::Approval> {
        let (status, action, outcome) = match request.decision.as_str() {
            "approved" => (GateStatus::Approved, GateAction::Approved, "approved"),
            "denied" => (GateStatus::Denied, GateAction::Denied, "denied"),
            _ => return Err(ApiError::bad_request("decision must be \"approved\" or \"denied\"").into()),
        };
        if request.note.chars().count() > MAX_NOTE {
            return Err(ApiError::bad_request(format!("note is at most {MAX_NOTE} characters")).into());
        }
        let id = request.id;
        let decider = if request.link_token.is_empty() {
            caller.require(Permission::DecideApprovals)?;
            match &caller.principal {
                Principal::User { sub, role } => Decider {
                    actor: format!("user:{sub}"),
                    kind: GateActor::User,
                    via: DecidedVia::User,
                    role: Some(role.as_str()),
                },
                Principal::IntegrationKey { key_id, .. } => Decider {
                    actor: format!("key:{key_id}"),
                    kind: GateActor::IntegrationKey,
                    via: DecidedVia::IntegrationKey,
                    role: None,
                },
                Principal::Service { .. } | Principal::Product { .. } => {
                    return Err(
                        ApiError::forbidden("Only an org's people and keys decide an approval").into()
                    );
                }
            }
        } else {
            let claims = oa_auth::links::verify(self.secret(), &request.link_token, &id)
                .map_err(|error| ApiError::forbidden(format!("{error}")))?;
            if claims.org_id != caller.org_id {
                return Err(ApiError::forbidden("this link is not valid").into());
            }
            Decider {
                actor: claims.sub,
                kind: GateActor::SignedLink,
                via: DecidedVia::SignedLink,
                role: None,
            }
        };
        if !GateId::is_well_formed(&id) {
            return Err(not_found(&id));
        }
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let gate = store::lock(&mut tx, &caller.org(), &GateId::from(id.as_str()))
            .await?
            .ok_or_else(|| not_found(&id))?;
        if let Some(role) = decider.role
            && !gate.approvers.iter().any(|r| r == role)
        {
            return Err(ApiError::forbidden(format!(
                "Only {} may decide this approval",
                gate.approvers.join(" or ")
            ))
            .into());
        }
        if gate.status != GateStatus::Pending {
            return Err(already_closed(&gate).into());
        }
        if gate.expires_at <= chrono::Utc::now() {
            return Err(ApprovalsError::Expired);
        }
        let note = Some(request.note.as_str()).filter(|n| !n.is_empty());
        let decision = store::Decision { status, outcome, by: &decider.actor, via: decider.via, note };
        let decided = store::decide(&mut tx, &gate.id, &decision).await?;
        store::audit(&mut tx, &decided, action, &decider.actor, decider.kind, note, None).await?;
        tx.commit().await?;
        observe_decision(outcome, decider.via.as_str(), decided.created_at);
        tracing::info!(
            approval_id = decided.id.as_str(),
            decision = outcome,
            by = decider.actor,
            "approval decided"
        );
        self.shared.publish(&decided).await;
        Ok(reply(&decided))
    }

    async fn mint(&self, caller: Caller, request: pb::MintLinksRequest) -> Result<pb::MintLinksResponse> {
        engine_only(&caller)?;
        let id = request.approval_id;
        if !GateId::is_well_formed(&id) {
            return Err(not_found(&id));
        }
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let gate = store::get(&mut tx, &caller.org(), &GateId::from(id.as_str()))
            .await?
            .ok_or_else(|| not_found(&id))?;
        tx.commit().await?;
        let ttl = i64::try_from(self.shared.config.link_ttl_seconds).unwrap_or(i64::MAX / 4);
        let expires_at = gate.expires_at.timestamp().min(chrono::Utc::now().timestamp().saturating_add(ttl));
        let base = self.shared.config.public_url.trim_end_matches('/');
        let mut links = HashMap::new();
        for recipient in request.recipients {
            let token = oa_auth::links::mint(
                self.secret(),
                &caller.org_id,
                &id,
                &recipient,
                expires_at.max(0) as u64,
            )
            .map_err(|e| ApiError::internal_from("signing a link", &e))?;
            links.insert(recipient, format!("{base}/approvals/{id}/link?token={token}"));
        }
        Ok(pb::MintLinksResponse { links })
    }

    async fn deny_open(
        &self,
        caller: Caller,
        request: pb::DenyOpenGatesRequest,
    ) -> Result<pb::DenyOpenGatesResponse> {
        caller.require(Permission::ControlExecutions)?;
        if request.execution_ids.is_empty() {
            return Ok(pb::DenyOpenGatesResponse { denied: 0 });
        }
        let reason = Some(request.reason.as_str()).filter(|r| !r.is_empty()).unwrap_or("Execution cancelled");
        let by = match caller.principal {
            Principal::Service { .. } => "system:cancel".to_owned(),
            _ => caller.principal_label(),
        };
        let mut tx = begin_org(&self.shared.pool, &caller.org_id).await?;
        let denied = store::deny_open(&mut tx, &request.execution_ids, &by, reason).await?;
        let kind = match caller.principal {
            Principal::User { .. } => GateActor::User,
            Principal::IntegrationKey { .. } => GateActor::IntegrationKey,
            Principal::Service { .. } | Principal::Product { .. } => GateActor::System,
        };
        for gate in &denied {
            store::audit(&mut tx, gate, GateAction::Denied, &by, kind, Some(reason), None).await?;
        }
        tx.commit().await?;
        Ok(pb::DenyOpenGatesResponse { denied: denied.len() as u32 })
    }
}

#[tonic::async_trait]
impl Approvals for ApprovalsService {
    async fn open_gate(&self, request: tonic::Request<pb::OpenGateRequest>) -> GrpcResult<pb::Approval> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.open(caller, request.into_inner()).await?))
    }

    async fn list_approvals(
        &self,
        request: tonic::Request<pb::ListApprovalsRequest>,
    ) -> GrpcResult<pb::ListApprovalsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.list(caller, request.into_inner()).await?))
    }

    async fn get_approval(
        &self,
        request: tonic::Request<pb::GetApprovalRequest>,
    ) -> GrpcResult<pb::Approval> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.get(caller, request.into_inner()).await?))
    }

    async fn decide(&self, request: tonic::Request<pb::DecideRequest>) -> GrpcResult<pb::Approval> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.decide_for(caller, request.into_inner()).await?))
    }

    async fn mint_links(
        &self,
        request: tonic::Request<pb::MintLinksRequest>,
    ) -> GrpcResult<pb::MintLinksResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.mint(caller, request.into_inner()).await?))
    }

    async fn deny_open_gates(
        &self,
        request: tonic::Request<pb::DenyOpenGatesRequest>,
    ) -> GrpcResult<pb::DenyOpenGatesResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.deny_open(caller, request.into_inner()).await?))
    }
}

/// Counts a decision (`via` names its channel) and times it from the gate's opening.
pub(crate) fn observe_decision(
    outcome: &'static str,
    via: &'static str,
    opened: chrono::DateTime<chrono::Utc>,
) {
    metrics::counter!(metrics::APPROVALS_DECIDED, "role" => "approvals", "outcome" => outcome, "channel" => via)
        .increment(1);
    let seconds = (chrono::Utc::now() - opened).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!(metrics::APPROVAL_DECISION_TIME, "role" => "approvals", "outcome" => outcome)
        .record(seconds);
}
