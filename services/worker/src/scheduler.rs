//! Schedule triggers: every active agent with a cron (and time zone) starts an execution on each
//! tick. All worker replicas run this loop; the execution of a tick has the event id
//! `evt_sched_<agent>_<unix seconds>`, so the unique (event, agent) key lets exactly one replica
//! create it.

use oa_domain::ids::{AgentId, EventId, ExecutionId, OrgId};
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oa_bus::{Envelope, Topology, WorkItem};
use oa_domain::Caller;
use oa_domain::agent::AgentDefinition;
use oa_executions::store;
use oa_proto::agents::ListSchedulesRequest;
use oa_proto::agents::agents_client::AgentsClient;
use oa_store::begin_org;
use secrecy::SecretString;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Ticks missed while no worker ran are caught up only this far back, so a restart does not
/// start a storm of stale executions.
const CATCH_UP: chrono::Duration = chrono::Duration::seconds(60);
const POLL: Duration = Duration::from_secs(1);

pub struct Scheduler {
    pub pool: PgPool,
    pub agents: AgentsClient<Channel>,
    pub token: SecretString,
    pub jetstream: oa_bus::async_nats::jetstream::Context,
    pub topology: Topology,
}

/// The ticks of `cron` in `timezone` within `(after, until]`.
pub fn ticks(cron: &str, timezone: &str, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let (Ok(cron), Ok(zone)) = (cron.parse::<croner::Cron>(), timezone.parse::<chrono_tz::Tz>()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut cursor = after.with_timezone(&zone);
    while let Ok(next) = cron.find_next_occurrence(&cursor, false) {
        let next_utc = next.with_timezone(&Utc);
        if next_utc > until || found.len() >= 120 {
            break;
        }
        found.push(next_utc);
        cursor = next;
    }
    found
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut checked: HashMap<String, DateTime<Utc>> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let now = Utc::now();
            let caller = Caller::service("scheduler", "system");
            let request = oa_auth::service::outgoing(ListSchedulesRequest {}, &caller, &self.token);
            let schedules = match self.agents.clone().list_schedules(request).await {
                Ok(response) => response.into_inner().schedules,
                Err(status) => {
                    tracing::debug!(%status, "schedules unavailable");
                    continue;
                }
            };
            for schedule in schedules {
                let after = checked
                    .get(&schedule.agent_id)
                    .copied()
                    .unwrap_or(now - chrono::Duration::seconds(1))
                    .max(now - CATCH_UP);
                for tick in ticks(&schedule.cron, &schedule.timezone, after, now) {
                    if let Err(error) = self.fire(&schedule, tick).await {
                        tracing::warn!(error = %error, agent_id = %schedule.agent_id, "a scheduled run could not start; retried next poll");
                        break;
                    }
                    checked.insert(schedule.agent_id.clone(), tick);
                }
                checked.entry(schedule.agent_id.clone()).and_modify(|t| *t = (*t).max(after)).or_insert(now);
            }
        }
    }

    async fn fire(&self, schedule: &oa_proto::agents::Schedule, tick: DateTime<Utc>) -> anyhow::Result<()> {
        let definition: AgentDefinition = serde_json::from_str(&schedule.definition_json)?;
        let suffix = schedule.agent_id.trim_start_matches("agent_");
        let mut envelope = Envelope::new(
            &schedule.org_id,
            "schedule",
            "tick",
            json!({
                "scheduled_for": tick, "cron": schedule.cron, "timezone": schedule.timezone, "agent_id": schedule.agent_id,
            }),
        );
        envelope.id = format!("evt_sched_{suffix}_{}", tick.timestamp());
        envelope.occurred_at = tick;
        let trigger_event = serde_json::to_value(&envelope)?;
        let execution_id = ExecutionId::generate();
        let (org, agent, event) = (
            OrgId::from(schedule.org_id.as_str()),
            AgentId::from(schedule.agent_id.as_str()),
            EventId::from(envelope.id.as_str()),
        );
        let mut tx = begin_org(&self.pool, &schedule.org_id).await?;
        let new = store::NewExecution {
            id: &execution_id,
            org_id: &org,
            agent_id: &agent,
            agent_version: schedule.version,
            definition: &definition,
            event_id: &event,
            trigger_event: &trigger_event,
            retry_of: None,
        };
        let inserted = store::insert(&mut tx, &new).await?;
        tx.commit().await?;
        if inserted {
            let item =
                WorkItem { org_id: schedule.org_id.clone(), execution_ids: vec![execution_id.to_string()] };
            oa_bus::publish_work(&self.jetstream, &self.topology, execution_id.as_str(), &item).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_time_zone() {
        let after: DateTime<Utc> = "2026-03-09T06:00:00Z".parse().unwrap();
        let until: DateTime<Utc> = "2026-03-10T06:00:00Z".parse().unwrap();
        // 08:00 in Paris is 07:00 UTC in March (before daylight saving time).
        assert_eq!(
            ticks("0 8 * * *", "Europe/Paris", after, until),
            vec!["2026-03-09T07:00:00Z".parse::<DateTime<Utc>>().unwrap()]
        );
        assert_eq!(ticks("0 8 * * *", "UTC", after, until).len(), 1);
        assert_eq!(ticks("*/30 * * * *", "UTC", after, until).len(), 48);
        assert!(ticks("not a cron", "UTC", after, until).is_empty());
        let minute: DateTime<Utc> = "2026-03-09T06:01:00Z".parse().unwrap();
        assert_eq!(ticks("*/2 * * * * *", "UTC", after, minute).len(), 30, "a seconds field is allowed");
    }
}
