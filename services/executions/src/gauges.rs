//! The executions role's gauges: how many executions are pending, running and waiting for an
//! approval across orgs, read from Postgres every few seconds in every replica.

use std::time::Duration;

use oa_domain::status::ExecutionStatus;
use oa_telemetry::metrics;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(pool: PgPool, shutdown: CancellationToken) {
    loop {
        match crate::store::count_live(&pool).await {
            Ok(counts) => {
                for status in
                    [ExecutionStatus::Pending, ExecutionStatus::Running, ExecutionStatus::WaitingApproval]
                {
                    let count = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                    metrics::gauge!(metrics::EXECUTIONS_LIVE, "role" => "executions", "status" => status.as_str())
                        .set(count as f64);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot count live executions"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
