//! How a consumed message is settled, the same way on every stream: an outage (Postgres, NATS or a
//! service down) holds the message and retries in place without using up a delivery; bad data
//! gives the message up at once with its reason; anything else is redelivered after a delay, up to
//! `nats.max_deliveries`, and then given up with reason `max_deliveries`. Giving up is itself
//! retried until it is recorded (it needs the database), so nothing is dropped and nothing loops.

use std::future::Future;
use std::time::Duration;

use oa_bus::Topology;
use oa_bus::async_nats::jetstream::{self, AckKind};
use oa_store::Fault;
use tokio_util::sync::CancellationToken;

/// A service the worker needed could not be reached: an outage, like the database being down.
#[derive(Debug, thiserror::Error)]
#[error("{service} unavailable: {message}")]
pub struct Unavailable {
    pub service: &'static str,
    pub message: String,
}

impl Unavailable {
    pub fn new(service: &'static str, message: impl std::fmt::Display) -> Unavailable {
        Unavailable { service, message: message.to_string() }
    }
}

/// What a failure means for its message, from the first cause that says.
pub fn fault_of(error: &anyhow::Error) -> Fault {
    for cause in error.chain() {
        if let Some(error) = cause.downcast_ref::<sqlx::Error>() {
            return oa_store::fault(error);
        }
        if let Some(failed) = cause.downcast_ref::<crate::dead_letters::BatchFailed>() {
            return failed.fault;
        }
        if cause.is::<Unavailable>() || cause.is::<oa_bus::BusError>() {
            return Fault::Outage;
        }
    }
    Fault::Other
}

/// Why a message was given up: the reason code first, then what happened.
pub fn max_deliveries_reason(deliveries: u64, last_error: Option<&str>) -> String {
    match last_error {
        Some(error) => format!("max_deliveries: failed {deliveries} deliveries, the last with: {error}"),
        None => format!("max_deliveries: delivered {deliveries} times without being settled"),
    }
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Handles `message` with `handle` and settles it. `give_up(reason)` records a message that will
/// not be handled (a dead letter, or failed executions); the message is acked only once either has
/// succeeded, or left for redelivery.
pub async fn settle<H, HF, G, GF>(
    message: &jetstream::Message,
    topology: &Topology,
    stop: &CancellationToken,
    handle: H,
    give_up: G,
) where
    H: Fn() -> HF,
    HF: Future<Output = anyhow::Result<()>>,
    G: Fn(String) -> GF,
    GF: Future<Output = anyhow::Result<()>>,
{
    let delivered = message.info().map(|info| info.delivered.max(1) as u64).unwrap_or(1);
    // A message past its budget was last held by a worker that died or hung on it: not again.
    let mut giving_up =
        (delivered > topology.max_deliveries).then(|| max_deliveries_reason(delivered - 1, None));
    let mut pause = FIRST_PAUSE;
    let mut outages = 0u32;
    loop {
        let result = match &giving_up {
            None => handle().await,
            Some(reason) => give_up(reason.clone()).await,
        };
        let error = match result {
            Ok(()) => {
                let _ = message.double_ack().await;
                return;
            }
            Err(error) => error,
        };
        match (fault_of(&error), giving_up.is_some()) {
            (Fault::BadData, false) => {
                giving_up = Some(format!("{error:#}"));
                continue;
            }
            (Fault::Other, false) if delivered >= topology.max_deliveries => {
                giving_up = Some(max_deliveries_reason(delivered, Some(&format!("{error:#}"))));
                continue;
            }
            (Fault::Other, false) => {
                tracing::warn!(error = %format!("{error:#}"), delivered, "message failed; it will be redelivered");
                let _ = message.ack_with(AckKind::Nak(Some(topology.redelivery_delay))).await;
                return;
            }
            // An outage, or giving up could not be recorded yet: hold the message and try again.
            _ => {}
        }
        outages += 1;
        if outages == 1 || outages.is_multiple_of(20) {
            tracing::warn!(error = %format!("{error:#}"), attempts = outages, "outage: holding the message and retrying");
        }
        let _ = message.ack_with(AckKind::Progress).await;
        tokio::select! {
            () = stop.cancelled() => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Gives a message back to the bus un-handled, for another replica to take at once: the worker is
/// shutting down and its grace is over.
pub async fn hand_back(message: &jetstream::Message) {
    tracing::info!(subject = %message.subject, "draining: handing the message back to the bus");
    let _ = message.ack_with(AckKind::Nak(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_bad_data_and_the_rest_are_told_apart() {
        let outage = anyhow::Error::from(Unavailable::new("catalog", "connection refused")).context("ingest");
        assert_eq!(fault_of(&outage), Fault::Outage);
        let pool = anyhow::Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(fault_of(&pool), Fault::Outage);
        assert_eq!(fault_of(&anyhow::anyhow!("something odd")), Fault::Other);
    }

    #[test]
    fn the_reason_starts_with_its_code() {
        assert!(max_deliveries_reason(5, Some("boom")).starts_with("max_deliveries: "));
        assert!(max_deliveries_reason(5, None).starts_with("max_deliveries: "));
    }
}
