//! The credits service (`oneagents.credits.v1.Credits`): each org's monthly allocation (its tier's,
//! or an operator's override), reservations before metered steps, commits and releases after, an
//! append-only ledger, and usage by agent and model tier. It never lets an org overdraw.
//!
//! Owns schema `credits` and touches no other.

mod error;
pub mod store;

pub use error::CreditsError;

use oa_domain::{ApiError, Caller, Permission, Principal};
use oa_proto::credits as pb;
use oa_proto::credits::credits_server::{Credits, CreditsServer};
use oa_store::begin_org;
use oa_telemetry::metrics;
use sqlx::PgPool;

/// The largest single reservation accepted: far above any tier price, far below overflow.
pub const MAX_RESERVATION: i64 = 1_000_000;

pub struct CreditsService {
    pool: PgPool,
    tiers: oa_config::TiersConfig,
}

pub type GuardedCredits = tonic::service::interceptor::InterceptedService<
    CreditsServer<CreditsService>,
    oa_auth::service::ServiceGuard,
>;

type GrpcResult<T> = Result<tonic::Response<T>, tonic::Status>;
type Result<T, E = CreditsError> = std::result::Result<T, E>;

fn engine_only(caller: &Caller) -> Result<()> {
    match caller.principal {
        Principal::Service { .. } => Ok(()),
        _ => Err(CreditsError::EngineOnly),
    }
}

impl CreditsService {
    pub fn build(pool: PgPool, config: &oa_config::Config) -> GuardedCredits {
        let service = CreditsService { pool, tiers: config.tiers.clone() };
        CreditsServer::with_interceptor(
            service,
            oa_auth::service::ServiceGuard::new(config.grpc.service_token.clone()),
        )
    }

    async fn reserve_once(&self, caller: &Caller, request: &pb::ReserveRequest) -> Result<store::Reserved> {
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let allocation = store::allocation(&mut tx, &caller.org_id, &self.tiers, &caller.tier).await?;
        let reserve = store::ReserveRequest {
            org_id: &caller.org_id,
            idempotency_key: &request.idempotency_key,
            amount: request.amount,
            execution_id: &request.execution_id,
            step_id: &request.step_id,
            agent_id: &request.agent_id,
            model_tier: &request.model_tier,
        };
        let outcome = store::reserve(&mut tx, &reserve, allocation).await;
        match outcome {
            Ok(store::Reserved::New(reservation)) => {
                tx.commit().await?;
                metrics::counter!(metrics::CREDITS_RESERVED, "role" => "credits")
                    .increment(request.amount as u64);
                Ok(store::Reserved::New(reservation))
            }
            // Nothing to keep: insufficient and raced attempts roll back.
            Ok(other) => Ok(other),
            Err(error) if oa_store::is_unique_violation(&error) => Ok(store::Reserved::Raced),
            Err(error) => Err(error.into()),
        }
    }
}

/// The methods behind the gRPC handlers: each takes the resolved caller and returns the
/// service's error, which the handler maps once.
impl CreditsService {
    async fn reserve_for(&self, caller: Caller, request: pb::ReserveRequest) -> Result<pb::ReserveResponse> {
        engine_only(&caller)?;
        if request.amount <= 0 || request.amount > MAX_RESERVATION {
            let message = format!("amount must be between 1 and {MAX_RESERVATION}");
            return Err(ApiError::bad_request(message).into());
        }
        if request.idempotency_key.is_empty() || request.idempotency_key.len() > 300 {
            return Err(ApiError::bad_request("a reservation needs an idempotency key").into());
        }
        // A concurrent reservation of the same key is read back once the winner committed.
        for _ in 0..3 {
            let reservation = match self.reserve_once(&caller, &request).await? {
                store::Reserved::New(r) | store::Reserved::Existing(r) => r,
                store::Reserved::Insufficient { remaining } => {
                    metrics::counter!(metrics::CREDITS_REFUSED, "role" => "credits").increment(1);
                    return Err(CreditsError::Insufficient { remaining });
                }
                store::Reserved::Raced => continue,
            };
            if reservation.status == oa_domain::status::ReservationStatus::Released {
                return Err(CreditsError::Released);
            }
            return Ok(pb::ReserveResponse {
                reservation_id: reservation.id,
                remaining: reservation.remaining,
            });
        }
        Err(CreditsError::Contended)
    }

    async fn commit_for(&self, caller: Caller, request: pb::CommitRequest) -> Result<pb::CommitResponse> {
        engine_only(&caller)?;
        if request.amount < 0 || request.amount > MAX_RESERVATION {
            return Err(ApiError::bad_request("amount must not be negative or absurd").into());
        }
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        store::settle(&mut tx, &caller.org_id, &request.reservation_id, Some(request.amount))
            .await?
            .map_err(CreditsError::Settle)?;
        tx.commit().await?;
        metrics::counter!(metrics::CREDITS_COMMITTED, "role" => "credits").increment(request.amount as u64);
        Ok(pb::CommitResponse {})
    }

    async fn release_for(&self, caller: Caller, request: pb::ReleaseRequest) -> Result<pb::ReleaseResponse> {
        engine_only(&caller)?;
        let reservation_id = request.reservation_id;
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        store::settle(&mut tx, &caller.org_id, &reservation_id, None).await?.map_err(CreditsError::Settle)?;
        tx.commit().await?;
        metrics::counter!(metrics::CREDITS_RELEASED, "role" => "credits").increment(1);
        Ok(pb::ReleaseResponse {})
    }

    async fn usage(&self, caller: Caller, request: pb::GetUsageRequest) -> Result<pb::Usage> {
        caller.require(Permission::ReadCredits)?;
        let month = match request.month {
            month if month.is_empty() => store::current_month(),
            month if store::months_back(&month, 1) == [month.clone()] => month,
            _ => return Err(ApiError::bad_request("month is YYYY-MM").into()),
        };
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let allocation = store::allocation(&mut tx, &caller.org_id, &self.tiers, &caller.tier).await?;
        let usage = store::usage(&mut tx, &caller.org_id, &month, allocation).await?;
        tx.commit().await?;
        Ok(pb::Usage { usage_json: usage.to_string() })
    }

    async fn stale_reservations(
        &self,
        caller: Caller,
        request: pb::ListStaleReservationsRequest,
    ) -> Result<pb::ListStaleReservationsResponse> {
        engine_only(&caller)?;
        let limit = i64::from(request.limit.clamp(1, 1000));
        let older_than = i64::try_from(request.older_than_seconds).unwrap_or(i64::MAX / 2);
        let mut tx = self.pool.begin().await?;
        let stale = store::stale_reservations(&mut tx, older_than, limit).await?;
        tx.commit().await?;
        Ok(pb::ListStaleReservationsResponse {
            reservations: stale
                .into_iter()
                .map(|r| pb::StaleReservation {
                    reservation_id: r.id,
                    org_id: r.org_id,
                    execution_id: r.execution_id,
                    step_id: r.step_id,
                    amount: r.amount,
                })
                .collect(),
        })
    }

    async fn history(
        &self,
        caller: Caller,
        _request: pb::GetHistoryRequest,
    ) -> Result<pb::GetHistoryResponse> {
        caller.require(Permission::ReadCredits)?;
        let mut tx = begin_org(&self.pool, &caller.org_id).await?;
        let allocation = store::allocation(&mut tx, &caller.org_id, &self.tiers, &caller.tier).await?;
        let history = store::history(&mut tx, &caller.org_id, allocation).await?;
        tx.commit().await?;
        Ok(pb::GetHistoryResponse { history_json: history.to_string() })
    }
}

#[tonic::async_trait]
impl Credits for CreditsService {
    async fn reserve(&self, request: tonic::Request<pb::ReserveRequest>) -> GrpcResult<pb::ReserveResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.reserve_for(caller, request.into_inner()).await?))
    }

    async fn commit(&self, request: tonic::Request<pb::CommitRequest>) -> GrpcResult<pb::CommitResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.commit_for(caller, request.into_inner()).await?))
    }

    async fn release(&self, request: tonic::Request<pb::ReleaseRequest>) -> GrpcResult<pb::ReleaseResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.release_for(caller, request.into_inner()).await?))
    }

    async fn get_usage(&self, request: tonic::Request<pb::GetUsageRequest>) -> GrpcResult<pb::Usage> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.usage(caller, request.into_inner()).await?))
    }

    async fn list_stale_reservations(
        &self,
        request: tonic::Request<pb::ListStaleReservationsRequest>,
    ) -> GrpcResult<pb::ListStaleReservationsResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.stale_reservations(caller, request.into_inner()).await?))
    }

    async fn get_history(
        &self,
        request: tonic::Request<pb::GetHistoryRequest>,
    ) -> GrpcResult<pb::GetHistoryResponse> {
        let caller = oa_auth::service::caller_of(&request)?;
        Ok(tonic::Response::new(self.history(caller, request.into_inner()).await?))
    }
}
