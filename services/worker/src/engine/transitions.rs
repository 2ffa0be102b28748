//! The transactions that move an execution and its steps: one to open the execution, one to start
//! each step and one to finish it, one to complete or give up. Each locks the execution first, so
//! a cancel or a decision that lands in between is seen.

use std::collections::HashMap;
use std::time::Instant;

use oa_bus::WorkItem;
use oa_domain::agent::Step;
use oa_domain::ids::{ExecutionId, OrgId};
use oa_domain::status::{ExecutionStatus, StepStatus};
use oa_executions::store::{self, CompletedStep, ExecutionRow, StepOutcome, StepRow, StepSlot};
use oa_store::begin_org;
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};

use super::Engine;
use super::kinds::{self, StepResult, StepRun};
use crate::providers::StepError;

/// The step being moved, in its execution.
pub struct At<'a> {
    pub execution: &'a ExecutionRow,
    pub step: &'a Step,
    pub slot: StepSlot<'a>,
    /// When the run of the execution started.
    pub started: Instant,
}

pub enum Start {
    /// Run the step: its attempt, and the results of side effects it already had.
    Run { attempt: i32, recorded: HashMap<String, Value> },
    /// The step is settled without running: completed by another runner (its output), or skipped.
    Settled(Option<Value>),
    /// The run stops here: the execution ended, or this step failed.
    Stop,
}

pub enum Next {
    /// Go on to the next step, with this step's output when it completed.
    Go(Option<Value>),
    /// The run stops here: the step failed, waits for a human, or the execution was ended.
    Stop,
}

impl Engine {
    /// Locks the execution, marks it running when it was pending, and reads its trace. `None`
    /// when there is nothing to run: the execution is unknown or has ended.
    pub(super) async fn open(
        &self,
        org_id: &OrgId,
        execution_id: &ExecutionId,
    ) -> anyhow::Result<Option<(ExecutionRow, Vec<StepRow>)>> {
        let mut tx = begin_org(&self.pool, org_id.as_str()).await?;
        let Some(execution) = store::lock(&mut tx, org_id, execution_id).await? else {
            tracing::warn!(%execution_id, "work for an unknown execution; dropped");
            return Ok(None);
        };
        if !execution.status.is_live() {
            return Ok(None);
        }
        if execution.status == ExecutionStatus::Pending {
            store::set_status(&mut tx, &execution.id, ExecutionStatus::Running, None).await?;
        }
        let rows = store::steps(&mut tx, &execution).await?;
        tx.commit().await?;
        Ok(Some((execution, rows)))
    }

    /// The one transaction that starts a step: skipped while a denied gate jumps ahead or when its
    /// `when` says no, failed when its `when` cannot be evaluated, otherwise marked running with
    /// its side effects' records read.
    pub(super) async fn start<'e>(
        &self,
        at: &At<'e>,
        skip_until: &mut Option<&'e str>,
        context: &Value,
    ) -> anyhow::Result<Start> {
        let (org_id, step) = (at.slot.org_id, at.step);
        let mut tx = begin_org(&self.pool, org_id.as_str()).await?;
        // A cancel between steps stops the run; the cancel already skipped what is left.
        let current = store::lock(&mut tx, org_id, &at.execution.id).await?;
        if current.is_none_or(|c| !c.status.is_active()) {
            return Ok(Start::Stop);
        }
        let skipped = StepOutcome::ended(StepStatus::Skipped);
        if let Some(target) = *skip_until {
            if target != step.id {
                store::finish_step(&mut tx, &at.slot, &skipped).await?;
                tx.commit().await?;
                return Ok(Start::Settled(None));
            }
            *skip_until = None;
        }
        if let Some(when) = &step.when {
            match self.templates.evaluate(when, context).await {
                Ok(true) => {}
                Ok(false) => {
                    store::finish_step(&mut tx, &at.slot, &skipped).await?;
                    tx.commit().await?;
                    return Ok(Start::Settled(None));
                }
                Err(error) => {
                    self.fail(tx, at, &error, 0).await?;
                    return Ok(Start::Stop);
                }
            }
        }
        let Some(attempt) = store::start_step(&mut tx, &at.slot).await? else {
            // Another runner of this execution finished the step: take its result and go on.
            let done = store::step(&mut tx, &at.execution.id, at.slot.position).await?;
            tx.commit().await?;
            return Ok(match done {
                Some(row) if row.status == StepStatus::Completed => {
                    Start::Settled(Some(row.output.unwrap_or(Value::Null)))
                }
                Some(row) if row.status == StepStatus::Skipped => Start::Settled(None),
                _ => Start::Stop,
            });
        };
        let recorded = if kinds::has_side_effects(&step.kind) {
            store::side_effects_of_step(&mut tx, &at.execution.id, &step.id).await?
        } else {
            HashMap::new()
        };
        tx.commit().await?;
        Ok(Start::Run { attempt, recorded })
    }

    /// The one transaction that finishes a step: its result recorded with the side effects it
    /// had, unless the execution ended meanwhile (a cancel, another runner's failure).
    pub(super) async fn finish(
        &self,
        at: &At<'_>,
        run: &StepRun<'_>,
        result: Result<StepResult, StepError>,
        duration_ms: i64,
    ) -> anyhow::Result<Next> {
        let execution_id = &at.execution.id;
        let mut tx = begin_org(&self.pool, at.slot.org_id.as_str()).await?;
        let current = store::lock(&mut tx, at.slot.org_id, execution_id).await?;
        let Some(current) = current.filter(|c| c.status.is_active()) else {
            return Ok(Next::Stop);
        };
        let effects = run.effects.take_new();
        store::record_side_effects(&mut tx, at.slot.org_id, execution_id, run.step_id, &effects).await?;
        let next = match result {
            Ok(StepResult::Done { output, credits }) => {
                let outcome = StepOutcome {
                    status: StepStatus::Completed,
                    output: Some(&output),
                    error: None,
                    credits_used: credits,
                    duration_ms,
                };
                store::finish_step(&mut tx, &at.slot, &outcome).await?;
                if current.status == ExecutionStatus::WaitingApproval {
                    store::set_status(&mut tx, execution_id, ExecutionStatus::Running, None).await?;
                }
                Next::Go(Some(output))
            }
            Ok(StepResult::Skipped { reason }) => {
                let output = json!({ "skipped_because": reason });
                let outcome = StepOutcome {
                    output: Some(&output),
                    duration_ms,
                    ..StepOutcome::ended(StepStatus::Skipped)
                };
                store::finish_step(&mut tx, &at.slot, &outcome).await?;
                Next::Go(None)
            }
            Ok(StepResult::Waiting { gate }) => {
                // Nothing is held while a human decides: the gate's change brings the work back.
                // A runner that already took the decision has finished the step; it stands.
                if store::set_waiting_output(&mut tx, execution_id, at.slot.position, &gate).await? {
                    store::set_status(&mut tx, execution_id, ExecutionStatus::WaitingApproval, None).await?;
                }
                Next::Stop
            }
            Err(error) => {
                self.fail(tx, at, &error, duration_ms).await?;
                return Ok(Next::Stop);
            }
        };
        tx.commit().await?;
        Ok(next)
    }

    /// Fails the step and the execution in `tx`, skipping what is left of it.
    async fn fail(
        &self,
        mut tx: Transaction<'_, Postgres>,
        at: &At<'_>,
        error: &StepError,
        duration_ms: i64,
    ) -> anyhow::Result<()> {
        let error = error.to_json();
        let outcome =
            StepOutcome { error: Some(&error), duration_ms, ..StepOutcome::ended(StepStatus::Failed) };
        store::finish_step(&mut tx, &at.slot, &outcome).await?;
        store::close_open_steps(&mut tx, &at.execution.id, StepStatus::Skipped).await?;
        store::set_status(&mut tx, &at.execution.id, ExecutionStatus::Failed, Some(&error)).await?;
        tx.commit().await?;
        super::observe::execution_finished(
            at.slot.org_id.as_str(),
            ExecutionStatus::Failed,
            at.execution.created_at,
        );
        self.record_run(at.slot.org_id.as_str(), at.execution.agent_id.as_str(), false, at.started);
        Ok(())
    }

    /// Completes the execution after its last step.
    /// Records the pure steps run since the last transaction, if the execution is still going;
    /// `false` when it ended meanwhile (a cancel): the run stops there.
    pub(super) async fn record_pure(
        &self,
        execution: &ExecutionRow,
        done: &mut Vec<CompletedStep>,
    ) -> anyhow::Result<bool> {
        if done.is_empty() {
            return Ok(true);
        }
        let Some(mut tx) = self.lock_going(execution).await? else {
            done.clear();
            return Ok(false);
        };
        store::record_completed_steps(&mut tx, &execution.org_id, &execution.id, done).await?;
        tx.commit().await?;
        done.clear();
        Ok(true)
    }

    /// A transaction holding the execution's lock, or `None` when it ended meanwhile (a cancel).
    async fn lock_going(
        &self,
        execution: &ExecutionRow,
    ) -> anyhow::Result<Option<Transaction<'_, Postgres>>> {
        let mut tx = begin_org(&self.pool, execution.org_id.as_str()).await?;
        let current = store::lock(&mut tx, &execution.org_id, &execution.id).await?;
        Ok(current.is_some_and(|current| current.status.is_active()).then_some(tx))
    }

    /// Completes the execution, with the pure steps that ran last, unless it ended meanwhile.
    pub(super) async fn complete(
        &self,
        execution: &ExecutionRow,
        started: Instant,
        done: &[CompletedStep],
    ) -> anyhow::Result<()> {
        let Some(mut tx) = self.lock_going(execution).await? else { return Ok(()) };
        store::record_completed_steps(&mut tx, &execution.org_id, &execution.id, done).await?;
        store::set_status(&mut tx, &execution.id, ExecutionStatus::Completed, None).await?;
        tx.commit().await?;
        super::observe::execution_finished(
            execution.org_id.as_str(),
            ExecutionStatus::Completed,
            execution.created_at,
        );
        self.record_run(execution.org_id.as_str(), execution.agent_id.as_str(), true, started);
        Ok(())
    }

    /// Fails every execution of `item` that has not ended, with `reason`: the work item was given
    /// up (`max_deliveries`, or data that cannot be stored).
    pub async fn give_up(&self, item: &WorkItem, reason: String) -> anyhow::Result<()> {
        let code = if reason.starts_with("max_deliveries") { "max_deliveries" } else { "unprocessable" };
        let error = StepError::new(code, reason).to_json();
        let started = Instant::now();
        let org_id = OrgId::from(item.org_id.as_str());
        for id in &item.execution_ids {
            let id = &ExecutionId::from(id.as_str());
            let mut tx = begin_org(&self.pool, &item.org_id).await?;
            let Some(execution) = store::lock(&mut tx, &org_id, id).await? else { continue };
            if !execution.status.is_live() {
                continue;
            }
            // The step it was stuck on fails with it, whether or not it got as far as running.
            let trace = store::steps(&mut tx, &execution).await?;
            match trace.iter().find(|row| !row.status.is_finished()) {
                Some(stuck) if stuck.status == StepStatus::Running => {
                    store::fail_running_steps(&mut tx, id, &error).await?;
                }
                Some(stuck) => {
                    let slot = StepSlot {
                        execution_id: id,
                        org_id: &org_id,
                        position: stuck.position,
                        step_id: &stuck.step_id,
                        step_type: stuck.step_type,
                    };
                    let outcome =
                        StepOutcome { error: Some(&error), ..StepOutcome::ended(StepStatus::Failed) };
                    store::finish_step(&mut tx, &slot, &outcome).await?;
                }
                None => {}
            }
            store::close_open_steps(&mut tx, id, StepStatus::Skipped).await?;
            store::set_status(&mut tx, id, ExecutionStatus::Failed, Some(&error)).await?;
            tx.commit().await?;
            super::observe::execution_finished(&item.org_id, ExecutionStatus::Failed, execution.created_at);
            tracing::warn!(execution_id = %id, %error, "execution given up");
            self.record_run(&item.org_id, execution.agent_id.as_str(), false, started);
        }
        Ok(())
    }
}
