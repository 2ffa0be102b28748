//! The step runner: runs (or resumes) one execution from its last persisted step. Each step is
//! marked running in one transaction before it starts and finished in one after, so a worker that
//! dies mid-execution leaves a trace another worker resumes from; side effects are keyed by
//! (execution, step, attempt) and recorded, so a resumed step does not repeat one that happened.
//!
//! The step kinds live in [`kinds`], one module each; the transactions that move an execution and
//! its steps in [`transitions`].

mod effects;
mod kinds;
mod observe;
mod output;
pub mod run_stats;
mod templates;
mod transitions;

use std::collections::BTreeMap;
use std::time::Instant;

use oa_bus::WorkItem;
use oa_domain::agent::{Step, StepKind};
use oa_domain::ids::{ExecutionId, OrgId};
use oa_domain::status::StepStatus;
use oa_executions::store::{CompletedStep, ExecutionRow, StepRow, StepSlot};
use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::approvals::approvals_client::ApprovalsClient;
use oa_proto::credits::credits_client::CreditsClient;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tonic::transport::Channel;
use tracing::Instrument;

pub use templates::Templates;

use self::effects::Effects;
use self::kinds::{StepResult, StepRun, human_approved_before, on_deny_of};
use self::transitions::{At, Next, Start};
use crate::providers::{Llm, Outbound};

pub struct Engine {
    pub pool: PgPool,
    pub llm: Llm,
    pub outbound: Outbound,
    pub prices: BTreeMap<String, i64>,
    pub agents: AgentsClient<Channel>,
    pub credits: CreditsClient<Channel>,
    pub approvals: ApprovalsClient<Channel>,
    pub token: SecretString,
    pub limits: oa_config::LimitsConfig,
    /// Each org's agents and settings (contacts, its own webhooks).
    pub index: std::sync::Arc<crate::index::AgentIndex>,
    pub templates: std::sync::Arc<Templates>,
    /// Agents' run counters, sent to the agents service in tallies.
    pub run_stats: std::sync::Arc<run_stats::RunStats>,
}

/// The template context of a step: the event, its payload, and earlier steps' outputs.
pub(crate) fn base_context(trigger_event: &Value) -> Value {
    json!({
        "event_payload": trigger_event["payload"],
        "event": {
            "id": trigger_event["id"],
            "source_product": trigger_event["source_product"],
            "event_type": trigger_event["event_type"],
            "client_id": trigger_event["client_id"],
            "occurred_at": trigger_event["occurred_at"],
        },
        "steps": {},
    })
}

/// Takes a completed step's output into the context of the steps after it, and where a denied
/// gate sends the run.
fn settle<'a>(step: &'a Step, output: Value, skip_until: &mut Option<&'a str>, context: &mut Value) {
    let target = skip_until.filter(|target| *target != step.id);
    *skip_until = target.or(on_deny_of(step, &output));
    context["steps"][&step.id] = json!({ "output": output });
}

impl Engine {
    /// Runs every execution of a work item side by side. Any infrastructure failure fails the
    /// item, which is redelivered; executions that finished return at once on the rerun.
    pub async fn run_all<F, Fut>(&self, item: &WorkItem, progress: &F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let runs = item.execution_ids.iter().map(|id| self.run(&item.org_id, id, progress));
        futures::future::join_all(runs).await.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok(())
    }

    /// Runs an execution to its end, or until it waits for a human. Errors are infrastructure
    /// failures: the work item is retried and the execution resumes where it stopped. A waiting
    /// execution is run again when its gate changes: the gate says whether it goes on.
    pub async fn run<F, Fut>(&self, org_id: &str, execution_id: &str, progress: &F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let started = Instant::now();
        let org = OrgId::from(org_id);
        let Some((execution, rows)) = self.open(&org, &ExecutionId::from(execution_id)).await? else {
            return Ok(());
        };
        // Every run is a child of the execution's span (opened at ingest): the runs after an
        // approval are in the execution's trace, linked to the decision that resumed them.
        let span = tracing::info_span!(
            "execution.run",
            org_id,
            agent_id = execution.agent_id.as_str(),
            execution_id = execution.id.as_str(),
        );
        if let Some(traceparent) = &execution.traceparent {
            oa_telemetry::continue_trace(&span, traceparent);
        }
        self.run_opened(&org, &execution, &rows, started, progress).instrument(span).await
    }

    /// Runs the steps of an opened execution from where it stopped.
    async fn run_opened<F, Fut>(
        &self,
        org: &OrgId,
        execution: &ExecutionRow,
        rows: &[StepRow],
        started: Instant,
        progress: &F,
    ) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let org_id = org.as_str();
        let settings = self
            .index
            .settings(org_id)
            .await
            .map_err(|e| crate::delivery::Unavailable::new("agents", e.message))?;
        let mut context = base_context(&execution.trigger_event);
        context["org"] = json!({ "contacts": settings.contacts, "webhooks": settings.webhooks });
        // Set while a denied gate's `on_deny` jumps ahead: steps before it are skipped.
        let mut skip_until: Option<&str> = None;
        // Pure steps that ran and are not recorded yet: they are recorded together, in the
        // transaction of the next step that is not pure, or of the completion.
        let mut done: Vec<CompletedStep> = Vec::new();
        for (position, step) in execution.definition.steps.iter().enumerate() {
            let row = rows.iter().find(|r| r.position == position as i32);
            match row.map(|r| r.status) {
                Some(StepStatus::Completed) => {
                    let output = row.and_then(|r| r.output.clone()).unwrap_or(Value::Null);
                    settle(step, output, &mut skip_until, &mut context);
                    continue;
                }
                Some(StepStatus::Skipped) => continue,
                Some(StepStatus::Cancelled | StepStatus::Failed) => return Ok(()),
                _ => {}
            }
            let slot = StepSlot {
                execution_id: &execution.id,
                org_id: org,
                position: position as i32,
                step_id: &step.id,
                step_type: step.kind.step_type(),
            };
            let at = At { execution, step, slot, started };
            // A transform reaches nothing outside and is the same when run again: a fresh one
            // (no `when`, no jump under way) is run first and recorded finished with the steps
            // after it, in one transaction. A crash in between only runs it again.
            let pure = matches!(step.kind, StepKind::Transform { .. })
                && row.is_none()
                && skip_until.is_none()
                && step.when.is_none();
            let (attempt, recorded) = if pure {
                (1, std::collections::HashMap::new())
            } else {
                if !self.record_pure(execution, &mut done).await? {
                    return Ok(());
                }
                match self.start(&at, &mut skip_until, &context).await? {
                    Start::Run { attempt, recorded } => (attempt, recorded),
                    Start::Settled(Some(output)) => {
                        settle(step, output, &mut skip_until, &mut context);
                        continue;
                    }
                    Start::Settled(None) => continue,
                    Start::Stop => return Ok(()),
                }
            };
            if !pure {
                progress().await;
            }

            let run = StepRun {
                org_id,
                execution_id: execution.id.as_str(),
                agent_id: execution.agent_id.as_str(),
                step_id: &step.id,
                key: format!("{}:{}:{attempt}", execution.id, step.id),
                human_approved: human_approved_before(&execution.definition.steps, position, &context),
                settings: &settings,
                effects: Effects::new(recorded),
            };
            let step_started = Instant::now();
            let step_started_at = chrono::Utc::now();
            let model_tier = match &step.kind {
                StepKind::AiReason { model_tier, .. } => Some(model_tier.as_str()),
                _ => None,
            };
            let span = tracing::info_span!(
                "step",
                execution_id = execution.id.as_str(),
                step_id = %step.id,
                step_type = step.kind.type_name(),
                model_tier,
                attempt,
                credits = tracing::field::Empty,
            );
            let limit = self.limits.max_step_output_bytes;
            let result = kinds::execute(self, step, &context, &run).instrument(span.clone()).await?.and_then(
                |result| {
                    Ok(match result {
                        StepResult::Done { output, credits } => {
                            StepResult::Done { output: output::checked(output, limit)?, credits }
                        }
                        other => other,
                    })
                },
            );
            let mut duration_ms = step_started.elapsed().as_millis() as i64;
            if matches!(step.kind, StepKind::Approval { .. }) {
                // An approval step lasts from its gate opening to its decision.
                let opened = row.and_then(|r| r.started_at).unwrap_or_else(chrono::Utc::now);
                duration_ms = duration_ms.max((chrono::Utc::now() - opened).num_milliseconds());
            }
            if let Ok(StepResult::Done { credits, .. }) = &result {
                span.record("credits", credits);
            }
            let outcome = match &result {
                Ok(StepResult::Done { .. }) => "completed",
                Ok(StepResult::Skipped { .. }) => "skipped",
                Ok(StepResult::Waiting { .. }) => "waiting",
                Err(_) => "failed",
            };
            observe::step(step.kind.type_name(), outcome, step_started.elapsed().as_secs_f64());
            span.in_scope(|| tracing::debug!(outcome, duration_ms, "step finished"));
            let result = match (pure, result) {
                (true, Ok(StepResult::Done { output, credits })) => {
                    done.push(CompletedStep {
                        position: position as i32,
                        step_id: step.id.clone(),
                        step_type: step.kind.step_type(),
                        output: output.clone(),
                        credits_used: credits,
                        duration_ms,
                        started_at: step_started_at,
                        completed_at: chrono::Utc::now(),
                    });
                    settle(step, output, &mut skip_until, &mut context);
                    continue;
                }
                (_, result) => result,
            };
            if !self.record_pure(execution, &mut done).await? {
                return Ok(());
            }
            match self.finish(&at, &run, result, duration_ms).await? {
                Next::Go(Some(output)) => settle(step, output, &mut skip_until, &mut context),
                Next::Go(None) => {}
                Next::Stop => return Ok(()),
            }
        }
        self.complete(execution, started, &done).await
    }

    fn record_run(&self, org_id: &str, agent_id: &str, succeeded: bool, started: Instant) {
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.run_stats.record(org_id, agent_id, succeeded, duration_ms);
    }
}
