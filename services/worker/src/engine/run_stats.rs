//! Agents' run counters, tallied in the worker and sent to the agents service a few times a
//! second: one `RecordRun` per agent with its runs since the last send, not one per run. Every
//! run of a busy agent used to update the same counters row, so the runs queued on its lock.
//!
//! The counters are statistics, not records: runs tallied but not yet sent when a worker dies are
//! not counted (the executions themselves are).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use oa_domain::Caller;
use oa_proto::agents::RecordRunRequest;
use oa_proto::agents::agents_client::AgentsClient;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How often the tallies are sent.
pub const SEND_EVERY: Duration = Duration::from_millis(200);

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    runs: u64,
    succeeded: u64,
    duration_ms: u64,
}

/// Runs tallied per (org, agent) since the last send.
#[derive(Default)]
pub struct RunStats {
    tallies: Mutex<HashMap<(String, String), Tally>>,
}

impl RunStats {
    /// Counts one run of `agent_id`.
    pub fn record(&self, org_id: &str, agent_id: &str, succeeded: bool, duration_ms: u64) {
        let mut tallies = self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tally = tallies.entry((org_id.to_owned(), agent_id.to_owned())).or_default();
        tally.runs += 1;
        tally.succeeded += u64::from(succeeded);
        tally.duration_ms = tally.duration_ms.saturating_add(duration_ms);
    }

    fn take(&self) -> HashMap<(String, String), Tally> {
        std::mem::take(&mut *self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Sends what was tallied, one request per agent; a tally that cannot be sent is dropped
    /// with a warning (the counters are statistics).
    pub async fn send(&self, agents: &AgentsClient<Channel>, token: &SecretString) {
        let sends = self.take().into_iter().map(|((org_id, agent_id), tally)| {
            let mut agents = agents.clone();
            async move {
                let caller = Caller::service("worker", &org_id);
                let request = RecordRunRequest {
                    agent_id: agent_id.clone(),
                    succeeded: tally.succeeded == tally.runs,
                    duration_ms: tally.duration_ms,
                    runs: tally.runs,
                    succeeded_runs: tally.succeeded,
                };
                if let Err(status) = agents.record_run(oa_auth::service::outgoing(request, &caller, token)).await
                {
                    tracing::warn!(%status, agent_id, runs = tally.runs, "could not record runs in the agent's stats");
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Sends the tallies every [`SEND_EVERY`] until `stop`, then once more.
    pub async fn run(&self, agents: AgentsClient<Channel>, token: SecretString, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SEND_EVERY) => self.send(&agents, &token).await,
                () = stop.cancelled() => break,
            }
        }
        self.send(&agents, &token).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_tallied_per_agent_until_taken() {
        let stats = RunStats::default();
        stats.record("org_a", "agent_1", true, 10);
        stats.record("org_a", "agent_1", false, 30);
        stats.record("org_b", "agent_1", true, 5);
        let taken = stats.take();
        assert_eq!(
            taken[&("org_a".to_owned(), "agent_1".to_owned())],
            Tally { runs: 2, succeeded: 1, duration_ms: 40 }
        );
        assert_eq!(
            taken[&("org_b".to_owned(), "agent_1".to_owned())],
            Tally { runs: 1, succeeded: 1, duration_ms: 5 }
        );
        assert!(stats.take().is_empty(), "taken tallies start again from zero");
    }
}
