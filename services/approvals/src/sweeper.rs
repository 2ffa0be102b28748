//! The expiry sweeper: every `sweep_interval_ms`, in every replica of the service, it expires the
//! gates past their `expires_at` (each once: a gate is taken under `FOR UPDATE SKIP LOCKED` and
//! only while still pending), applies the step's `on_timeout`, and publishes decisions whose
//! publish lags.

use oa_domain::ids::{GateId, OrgId};
use oa_domain::status::{DecidedVia, GateAction, GateActor};
use oa_telemetry::metrics;
use std::time::Duration;

use oa_store::begin_org;
use tokio_util::sync::CancellationToken;

use crate::{Shared, store};

const BATCH: i64 = 200;

pub async fn run(shared: Shared, shutdown: CancellationToken) {
    let interval = Duration::from_millis(shared.config.sweep_interval_ms.max(10));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = sweep(&shared).await {
            tracing::warn!(%error, "approval sweep failed; retrying");
        }
    }
}

/// One pass; returns how many gates it expired or escalated.
pub async fn sweep(shared: &Shared) -> Result<usize, oa_store::StoreError> {
    let republish_after = i64::try_from(shared.config.republish_after_seconds).unwrap_or(60);
    let mut tx = shared.pool.begin().await?;
    let (expired, lagging) = store::due(&mut tx, republish_after, BATCH).await?;
    let pending = store::count_pending(&mut tx).await?;
    metrics::gauge!(metrics::APPROVALS_PENDING, "role" => "approvals").set(pending as f64);
    tx.commit().await?;
    let mut handled = 0;
    for due in expired {
        if let Some(gate) = expire(shared, &due).await? {
            handled += 1;
            shared.publish(&gate).await;
        }
    }
    for due in lagging {
        let mut tx = begin_org(&shared.pool, &due.org_id).await?;
        let gate =
            store::get(&mut tx, &OrgId::from(due.org_id.as_str()), &GateId::from(due.id.as_str())).await?;
        tx.commit().await?;
        if let Some(gate) = gate.filter(|g| g.published_version < g.version) {
            shared.publish(&gate).await;
        }
    }
    Ok(handled)
}

/// Applies `on_timeout` to one expired gate, unless another replica got there first.
async fn expire(shared: &Shared, due: &store::Due) -> Result<Option<store::Gate>, oa_store::StoreError> {
    let mut tx = begin_org(&shared.pool, &due.org_id).await?;
    let Some(gate) = store::lock_expired(&mut tx, &GateId::from(due.id.as_str())).await? else {
        return Ok(None);
    };
    let changed = match (gate.on_timeout.as_str(), gate.escalate_to.as_deref(), gate.escalated_at) {
        ("escalate", Some(role), None) => {
            let escalated = store::escalate(&mut tx, &gate.id, role).await?;
            let detail = serde_json::json!({
                "approvers": escalated.approvers,
                "expires_at": store::time(&escalated.expires_at),
            });
            store::audit(
                &mut tx,
                &escalated,
                GateAction::Escalated,
                "timeout",
                GateActor::System,
                None,
                Some(&detail),
            )
            .await?;
            escalated
        }
        (on_timeout, _, _) => {
            // An escalated gate that expires again is denied: escalation happens once.
            let outcome = if on_timeout == "approve" { "approved" } else { "denied" };
            let note = format!("Expired without a decision; on_timeout {on_timeout}: {outcome}");
            let decision = store::Decision {
                status: oa_domain::status::GateStatus::Expired,
                outcome,
                by: "system:timeout",
                via: DecidedVia::Timeout,
                note: Some(&note),
            };
            let expired = store::decide(&mut tx, &gate.id, &decision).await?;
            metrics::counter!(metrics::APPROVALS_EXPIRED, "role" => "approvals").increment(1);
            crate::observe_decision(outcome, DecidedVia::Timeout.as_str(), gate.created_at);
            let detail = serde_json::json!({ "outcome": outcome });
            store::audit(
                &mut tx,
                &expired,
                GateAction::Expired,
                "timeout",
                GateActor::System,
                Some(&note),
                Some(&detail),
            )
            .await?;
            expired
        }
    };
    tx.commit().await?;
    tracing::info!(
        approval_id = changed.id.as_str(),
        status = changed.status.as_str(),
        "approval gate timed out"
    );
    Ok(Some(changed))
}
