//! Settles credit reservations that a dead worker left open. A reservation older than
//! `credits.reservation_ttl_seconds` is committed when its step completed (the model answered and
//! the result is in the trace) and released when its execution ended without it; one whose
//! execution is still running is left to the worker that resumes it, which reuses the same
//! reservation key and so charges once.

use oa_domain::ids::{ExecutionId, OrgId};
use std::time::Duration;

use oa_domain::Caller;
use oa_executions::store;
use oa_proto::credits::credits_client::CreditsClient;
use oa_proto::credits::{CommitRequest, ListStaleReservationsRequest, ReleaseRequest, StaleReservation};
use oa_store::begin_org;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Sweeper {
    pub pool: PgPool,
    pub credits: CreditsClient<Channel>,
    pub token: SecretString,
    pub ttl: Duration,
}

enum Settle {
    Commit(i64),
    Release,
    Leave,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = (self.ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(error) = self.sweep().await {
                tracing::debug!(error = %error, "credit sweep skipped");
            }
        }
    }

    async fn decide(&self, reservation: &StaleReservation) -> anyhow::Result<Settle> {
        let mut tx = begin_org(&self.pool, &reservation.org_id).await?;
        let (org, execution_id) =
            (OrgId::from(reservation.org_id.as_str()), ExecutionId::from(reservation.execution_id.as_str()));
        let Some(execution) = store::get(&mut tx, &org, &execution_id).await? else {
            return Ok(Settle::Release);
        };
        let steps = store::steps(&mut tx, &execution).await?;
        tx.commit().await?;
        let step = steps.iter().find(|s| s.step_id == reservation.step_id);
        Ok(match (step.map(|s| s.status.as_str()), execution.status.as_str()) {
            (Some("completed"), _) => Settle::Commit(step.map_or(reservation.amount, |s| s.credits_used)),
            (_, "pending" | "running") => Settle::Leave,
            _ => Settle::Release,
        })
    }

    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let caller = Caller::service("sweeper", "system");
        let request = ListStaleReservationsRequest { older_than_seconds: self.ttl.as_secs(), limit: 200 };
        let stale = self
            .credits
            .clone()
            .list_stale_reservations(oa_auth::service::outgoing(request, &caller, &self.token))
            .await?
            .into_inner()
            .reservations;
        let mut settled = 0;
        for reservation in stale {
            let org = Caller::service("sweeper", &reservation.org_id);
            let outcome = match self.decide(&reservation).await? {
                Settle::Leave => continue,
                Settle::Commit(amount) => {
                    let request =
                        CommitRequest { reservation_id: reservation.reservation_id.clone(), amount };
                    self.credits
                        .clone()
                        .commit(oa_auth::service::outgoing(request, &org, &self.token))
                        .await
                        .map(|_| ())
                }
                Settle::Release => {
                    let request = ReleaseRequest { reservation_id: reservation.reservation_id.clone() };
                    self.credits
                        .clone()
                        .release(oa_auth::service::outgoing(request, &org, &self.token))
                        .await
                        .map(|_| ())
                }
            };
            match outcome {
                Ok(()) => settled += 1,
                Err(status) => {
                    tracing::warn!(%status, reservation = %reservation.reservation_id, "could not settle a stale reservation")
                }
            }
        }
        if settled > 0 {
            tracing::info!(settled, "settled credit reservations left by dead workers");
        }
        Ok(settled)
    }
}
