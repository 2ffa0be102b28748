//! The step engine: runs (or resumes) one execution from its last persisted step. Each step is
//! marked running before it starts and finished after, so a worker that dies mid-execution leaves
//! a trace another worker resumes from; side effects are keyed by (execution, step, attempt) and
//! recorded, so a resumed step does not repeat one that happened.

use std::collections::BTreeMap;
use std::time::Instant;

use oa_bus::WorkItem;
use oa_domain::Caller;
use oa_domain::agent::{Step, StepKind};
use oa_domain::settings::OrgSettings;
use oa_executions::store::{self, StepOutcome};
use oa_proto::agents::RecordRunRequest;
use oa_proto::agents::agents_client::AgentsClient;
use oa_proto::approvals::approvals_client::ApprovalsClient;
use oa_proto::approvals::{MintLinksRequest, OpenGateRequest};
use oa_proto::credits::credits_client::CreditsClient;
use oa_proto::credits::{CommitRequest, ReleaseRequest, ReserveRequest};
use oa_store::begin_org;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::providers::{Llm, Outbound, StepError};

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
    pub renderer: oa_template::isolated::IsolatedRenderer,
}

/// The template context of a step: the event, its payload, and earlier steps' outputs.
fn base_context(trigger_event: &Value) -> Value {
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

/// Recipients with each contact reference (`{{ org.contacts.on_call_sms }}`) replaced by the org's
/// list; `Err` says why the step cannot run when a list it names is empty.
fn expand_contacts(recipients: &[String], settings: &OrgSettings) -> Result<Vec<String>, String> {
    let mut expanded = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        match oa_domain::settings::contact_reference(recipient) {
            Some(list) => {
                let contacts = settings.contacts(list);
                if contacts.is_empty() {
                    return Err(format!("the org has no {list} contact in its settings"));
                }
                expanded.extend(contacts);
            }
            None => expanded.push(recipient.clone()),
        }
    }
    Ok(expanded)
}

fn is_url(recipient: &str) -> bool {
    recipient.starts_with("https://") || recipient.starts_with("http://")
}

/// Rendered action params, checked against the operation's schema before anything is sent.
fn fits_operation(operation: &oa_domain::actions::Operation, params: Value) -> Result<Value, StepError> {
    let validator = jsonschema::validator_for(&operation.params)
        .map_err(|e| StepError::new("invalid_params", format!("the catalogue's schema: {e}")))?;
    let problems: Vec<String> =
        validator.iter_errors(&params).map(|e| format!("{e} at {}", e.instance_path())).collect();
    if problems.is_empty() {
        return Ok(params);
    }
    let error = format!("the params of {} do not fit its schema: {}", operation.action, problems.join("; "));
    Err(StepError::new("invalid_params", error))
}

/// Whether an approval gate before `position` was approved by a human in this execution (its
/// gate record says `approved`, not `expired`).
fn human_approved_before(steps: &[Step], position: usize, context: &Value) -> bool {
    steps[..position].iter().any(|step| {
        matches!(step.kind, StepKind::Approval { .. })
            && context["steps"][&step.id]["output"]["status"] == "approved"
    })
}

/// The start of a template, to name it in an error without quoting all of it.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// A step's result, refused when it holds what cannot be stored: the step then fails once, with a
/// clear error, instead of failing to be recorded (and being run again) forever.
fn storable(output: Value) -> Result<Value, StepError> {
    match oa_domain::hostile::find_nul(&output, "output") {
        None => Ok(output),
        Some(path) => Err(StepError::new(
            "invalid_output",
            format!("the step's output holds a NUL character (\\u0000) at {path}, which cannot be stored"),
        )),
    }
}

/// A step's result, refused when it is larger than `limit` bytes of JSON.
fn within_output_limit(output: Value, limit: usize) -> Result<Value, StepError> {
    let size = serde_json::to_vec(&output).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(StepError::new(
            "output_too_large",
            format!("the step's output is {size} bytes, more than the limit of {limit}"),
        ));
    }
    Ok(output)
}

/// Where a step runs: its org, execution and agent, and its idempotency key.
struct StepAt<'a> {
    org_id: &'a str,
    execution_id: &'a str,
    agent_id: &'a str,
    key: &'a str,
    /// Whether a gate before this step was approved by a human in this execution.
    human_approved: bool,
    /// Who the org's messages go to.
    settings: &'a OrgSettings,
}

enum StepResult {
    Done {
        output: Value,
        credits: i64,
    },
    /// The step's gate is open; `gate` is what the trace shows while it waits.
    Waiting {
        gate: Value,
    },
    /// The step did not run, for `reason` (a contact or webhook the org has not set).
    Skipped {
        reason: String,
    },
}

/// Statuses an execution can still make progress from.
const LIVE: [&str; 3] = ["pending", "running", "waiting_approval"];
/// Statuses a runner may go on in (a decision can land while a step is running).
const ACTIVE: [&str; 2] = ["running", "waiting_approval"];

/// Where a completed approval step sends the run: its `on_deny` step when the gate was denied.
fn on_deny_of<'a>(step: &'a Step, output: &Value) -> Option<&'a str> {
    match &step.kind {
        StepKind::Approval { on_deny: Some(target), .. } if output["decision"] == "denied" => {
            Some(target.as_str())
        }
        _ => None,
    }
}

impl Engine {
    /// Renders one template in an isolated, memory-capped renderer (see `oa_template::isolated`).
    async fn render(&self, text: &str, context: &Value) -> Result<String, StepError> {
        let rendered = self
            .renderer
            .render(text, context, self.limits.max_rendered_bytes)
            .await
            .map_err(|e| StepError::new("template_error", format!("{:?}: {e}", excerpt(text))))?;
        if rendered.contains('\0') {
            let error = format!("{:?} renders a NUL character (\\u0000)", excerpt(text));
            return Err(StepError::new("template_error", error));
        }
        Ok(rendered)
    }

    async fn render_optional(
        &self,
        text: Option<&str>,
        context: &Value,
    ) -> Result<Option<String>, StepError> {
        match text {
            Some(text) => self.render(text, context).await.map(Some),
            None => Ok(None),
        }
    }

    async fn render_all(&self, texts: &[String], context: &Value) -> Result<Vec<String>, StepError> {
        let mut rendered = Vec::with_capacity(texts.len());
        for text in texts {
            rendered.push(self.render(text, context).await?);
        }
        Ok(rendered)
    }

    async fn render_map(&self, map: &Map<String, Value>, context: &Value) -> Result<Value, StepError> {
        let mut out = Map::new();
        for (key, value) in map {
            let rendered = match value {
                Value::String(text) => Value::String(self.render(text, context).await?),
                other => other.clone(),
            };
            out.insert(key.clone(), rendered);
        }
        Ok(Value::Object(out))
    }

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
        let mut tx = begin_org(&self.pool, org_id).await?;
        let Some(execution) = store::lock(&mut tx, org_id, execution_id).await? else {
            tracing::warn!(execution_id, "work for an unknown execution; dropped");
            return Ok(());
        };
        if !LIVE.contains(&execution.status.as_str()) {
            return Ok(());
        }
        if execution.status == "pending" {
            store::set_status(&mut tx, &execution.id, "running", None).await?;
        }
        let rows = store::steps(&mut tx, &execution).await?;
        tx.commit().await?;

        let settings = self
            .index
            .settings(org_id)
            .await
            .map_err(|e| crate::delivery::Unavailable::new("agents", e.message))?;
        let mut context = base_context(&execution.trigger_event);
        context["org"] = json!({ "contacts": settings.contacts, "webhooks": settings.webhooks });
        // Set while a denied gate's `on_deny` jumps ahead: steps before it are skipped.
        let mut skip_until: Option<&str> = None;
        for (position, step) in execution.definition.steps.iter().enumerate() {
            let position = position as i32;
            let row = rows.iter().find(|r| r.position == position);
            let here = store::StepAt {
                execution_id: &execution.id,
                org_id,
                position,
                step_id: &step.id,
                step_type: step.kind.type_name(),
            };
            match row.map(|r| r.status.as_str()) {
                Some("completed") => {
                    let output = row.and_then(|r| r.output.clone()).unwrap_or(Value::Null);
                    skip_until = skip_until.filter(|target| *target != step.id).or(on_deny_of(step, &output));
                    context["steps"][&step.id] = json!({ "output": output });
                    continue;
                }
                Some("skipped") => continue,
                Some("cancelled") | Some("failed") => return Ok(()),
                _ => {}
            }
            // A cancel between steps stops the run; the cancel already skipped what is left.
            let mut tx = begin_org(&self.pool, org_id).await?;
            let current = store::lock(&mut tx, org_id, &execution.id).await?;
            if current.as_ref().is_none_or(|c| !ACTIVE.contains(&c.status.as_str())) {
                return Ok(());
            }
            let skipped =
                StepOutcome { status: "skipped", output: None, error: None, credits_used: 0, duration_ms: 0 };
            if let Some(target) = skip_until {
                if target != step.id {
                    store::finish_step(&mut tx, &here, &skipped).await?;
                    tx.commit().await?;
                    continue;
                }
                skip_until = None;
            }
            if let Some(when) = &step.when {
                match self.renderer.evaluate(when, &context).await {
                    Ok(true) => {}
                    Ok(false) => {
                        store::finish_step(&mut tx, &here, &skipped).await?;
                        tx.commit().await?;
                        continue;
                    }
                    Err(error) => {
                        let error = StepError::new("invalid_condition", format!("when {when:?}: {error}"));
                        let at = StepAt {
                            org_id,
                            execution_id: &execution.id,
                            agent_id: &execution.agent_id,
                            key: "",
                            human_approved: false,
                            settings: &settings,
                        };
                        self.fail(tx, &at, &here, &error, 0, started).await?;
                        return Ok(());
                    }
                }
            }
            let Some(attempt) = store::start_step(&mut tx, &here).await? else {
                // Another runner of this execution finished the step: take its result and go on.
                let done = store::step(&mut tx, &execution.id, position).await?;
                tx.commit().await?;
                match done {
                    Some(row) if row.status == "completed" => {
                        let output = row.output.unwrap_or(Value::Null);
                        skip_until = on_deny_of(step, &output);
                        context["steps"][&step.id] = json!({ "output": output });
                        continue;
                    }
                    Some(row) if row.status == "skipped" => continue,
                    _ => return Ok(()),
                }
            };
            tx.commit().await?;
            progress().await;

            let key = format!("{}:{}:{attempt}", execution.id, step.id);
            let step_started = Instant::now();
            let span =
                tracing::info_span!("step", step_id = %step.id, step_type = step.kind.type_name(), attempt);
            let human_approved =
                human_approved_before(&execution.definition.steps, position as usize, &context);
            let at = StepAt {
                org_id,
                execution_id: &execution.id,
                agent_id: &execution.agent_id,
                key: &key,
                human_approved,
                settings: &settings,
            };
            let result =
                self.execute(step, &context, &at).instrument(span).await?.and_then(|result| match result {
                    StepResult::Done { output, credits } => {
                        let output =
                            within_output_limit(storable(output)?, self.limits.max_step_output_bytes)?;
                        Ok(StepResult::Done { output, credits })
                    }
                    waiting => Ok(waiting),
                });
            let mut duration_ms = step_started.elapsed().as_millis() as i64;
            if matches!(step.kind, StepKind::Approval { .. }) {
                // An approval step lasts from its gate opening to its decision.
                let opened = row.and_then(|r| r.started_at).unwrap_or_else(chrono::Utc::now);
                duration_ms = duration_ms.max((chrono::Utc::now() - opened).num_milliseconds());
            }
            let mut tx = begin_org(&self.pool, org_id).await?;
            let current = store::lock(&mut tx, org_id, &execution.id).await?;
            let Some(current) = current.filter(|c| ACTIVE.contains(&c.status.as_str())) else {
                return Ok(());
            };
            match result {
                Ok(StepResult::Done { output, credits }) => {
                    let outcome = StepOutcome {
                        status: "completed",
                        output: Some(&output),
                        error: None,
                        credits_used: credits,
                        duration_ms,
                    };
                    store::finish_step(&mut tx, &here, &outcome).await?;
                    if current.status == "waiting_approval" {
                        store::set_status(&mut tx, &execution.id, "running", None).await?;
                    }
                    tx.commit().await?;
                    skip_until = on_deny_of(step, &output);
                    context["steps"][&step.id] = json!({ "output": output });
                }
                Ok(StepResult::Skipped { reason }) => {
                    let output = json!({ "skipped_because": reason });
                    let skipped = StepOutcome {
                        status: "skipped",
                        output: Some(&output),
                        error: None,
                        credits_used: 0,
                        duration_ms,
                    };
                    store::finish_step(&mut tx, &here, &skipped).await?;
                    tx.commit().await?;
                }
                Ok(StepResult::Waiting { gate }) => {
                    // Nothing is held while a human decides: the gate's change brings the work back.
                    // A runner that already took the decision has finished the step; it stands.
                    if store::set_waiting_output(&mut tx, &execution.id, position, &gate).await? {
                        store::set_status(&mut tx, &execution.id, "waiting_approval", None).await?;
                        tx.commit().await?;
                    }
                    return Ok(());
                }
                Err(error) => {
                    self.fail(tx, &at, &here, &error, duration_ms, started).await?;
                    return Ok(());
                }
            }
        }
        let mut tx = begin_org(&self.pool, org_id).await?;
        store::set_status(&mut tx, &execution.id, "completed", None).await?;
        tx.commit().await?;
        self.record_run(org_id, &execution.agent_id, true, started).await;
        Ok(())
    }

    /// Fails every execution of `item` that has not ended, with `reason`: the work item was given
    /// up (`max_deliveries`, or data that cannot be stored). Its running step fails with it.
    pub async fn give_up(&self, item: &WorkItem, reason: String) -> anyhow::Result<()> {
        let code = if reason.starts_with("max_deliveries") { "max_deliveries" } else { "unprocessable" };
        let error = StepError::new(code, reason).to_json();
        let started = Instant::now();
        for id in &item.execution_ids {
            let mut tx = begin_org(&self.pool, &item.org_id).await?;
            let Some(execution) = store::lock(&mut tx, &item.org_id, id).await? else { continue };
            if !LIVE.contains(&execution.status.as_str()) {
                continue;
            }
            store::fail_running_steps(&mut tx, id, &error).await?;
            store::close_open_steps(&mut tx, id, "skipped").await?;
            store::set_status(&mut tx, id, "failed", Some(&error)).await?;
            tx.commit().await?;
            tracing::warn!(execution_id = %id, %error, "execution given up");
            self.record_run(&item.org_id, &execution.agent_id, false, started).await;
        }
        Ok(())
    }

    async fn fail(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        at: &StepAt<'_>,
        here: &store::StepAt<'_>,
        error: &StepError,
        duration_ms: i64,
        started: Instant,
    ) -> anyhow::Result<()> {
        let error_json = error.to_json();
        let outcome = StepOutcome {
            status: "failed",
            output: None,
            error: Some(&error_json),
            credits_used: 0,
            duration_ms,
        };
        store::finish_step(&mut tx, here, &outcome).await?;
        store::close_open_steps(&mut tx, at.execution_id, "skipped").await?;
        store::set_status(&mut tx, at.execution_id, "failed", Some(&error_json)).await?;
        tx.commit().await?;
        self.record_run(at.org_id, at.agent_id, false, started).await;
        Ok(())
    }

    async fn record_run(&self, org_id: &str, agent_id: &str, succeeded: bool, started: Instant) {
        let caller = Caller::service("worker", org_id);
        let request = RecordRunRequest {
            agent_id: agent_id.to_owned(),
            succeeded,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        if let Err(status) =
            self.agents.clone().record_run(oa_auth::service::outgoing(request, &caller, &self.token)).await
        {
            tracing::warn!(%status, agent_id, "could not record the run in the agent's stats");
        }
    }

    /// Performs a side effect once: a recorded result under `key` is returned instead of acting.
    async fn once<F, Fut>(
        &self,
        org_id: &str,
        execution_id: &str,
        step_id: &str,
        key: &str,
        act: F,
    ) -> anyhow::Result<Result<Value, StepError>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Value, StepError>>,
    {
        let mut tx = begin_org(&self.pool, org_id).await?;
        if let Some(done) = store::side_effect(&mut tx, key).await? {
            return Ok(Ok(done));
        }
        tx.commit().await?;
        // What the outside answered is checked before it is recorded: an answer that cannot be
        // stored fails the step once, and the side effect is not repeated.
        let limit = self.limits.max_step_output_bytes;
        let result = act().await.and_then(storable).and_then(|output| within_output_limit(output, limit));
        if let Ok(value) = &result {
            let mut tx = begin_org(&self.pool, org_id).await?;
            store::record_side_effect(&mut tx, key, org_id, execution_id, step_id, value).await?;
            tx.commit().await?;
        }
        Ok(result)
    }

    /// An `ai_reason` step, metered: the tier's price is reserved before the model is called (no
    /// call when the org has too little left), committed after a good answer, released after a
    /// failure. A credits outage is an infrastructure error: the work is retried, and the same
    /// reservation key charges once.
    async fn metered_reason(
        &self,
        at: &StepAt<'_>,
        step_id: &str,
        tier: &str,
        system: Option<&str>,
        prompt: &str,
        schema: &Value,
    ) -> anyhow::Result<Result<StepResult, StepError>> {
        let price = self.prices.get(tier).copied().unwrap_or(0);
        let caller = Caller::service("worker", at.org_id);
        let mut reservation = None;
        if price > 0 {
            let request = ReserveRequest {
                idempotency_key: at.key.to_owned(),
                execution_id: at.execution_id.to_owned(),
                step_id: step_id.to_owned(),
                agent_id: at.agent_id.to_owned(),
                model_tier: tier.to_owned(),
                amount: price,
            };
            match self
                .credits
                .clone()
                .reserve(oa_auth::service::outgoing(request, &caller, &self.token))
                .await
            {
                Ok(response) => reservation = Some(response.into_inner().reservation_id),
                Err(status) => {
                    let error = oa_domain::ApiError::from_status(&status);
                    if error.code == oa_domain::ErrorCode::CreditInsufficient {
                        return Ok(Err(StepError::new("credit_insufficient", error.message)));
                    }
                    return Err(crate::delivery::Unavailable::new("credits", error.message).into());
                }
            }
        }
        let answer = self.llm.reason(tier, system, prompt, schema).await;
        if let Some(reservation_id) = reservation {
            let settled = match &answer {
                Ok(_) => {
                    let request = CommitRequest { reservation_id, amount: price };
                    self.credits
                        .clone()
                        .commit(oa_auth::service::outgoing(request, &caller, &self.token))
                        .await
                        .map(|_| ())
                }
                Err(_) => {
                    let request = ReleaseRequest { reservation_id };
                    self.credits
                        .clone()
                        .release(oa_auth::service::outgoing(request, &caller, &self.token))
                        .await
                        .map(|_| ())
                }
            };
            if let Err(status) = settled {
                return Err(crate::delivery::Unavailable::new("credits", status.message()).into());
            }
        }
        Ok(answer.map(|output| StepResult::Done { output, credits: price }))
    }

    /// An `approval` step: opens its gate (or finds it open, when resuming) and reads what was
    /// decided. The first time, the recipients in `notify` get the message with their own signed
    /// link, once each.
    async fn gate(
        &self,
        step: &Step,
        context: &Value,
        at: &StepAt<'_>,
    ) -> anyhow::Result<Result<StepResult, StepError>> {
        let StepKind::Approval { message, approvers, expires_in, on_timeout, escalate_to, notify, .. } =
            &step.kind
        else {
            unreachable!("gate() runs approval steps");
        };
        let message = match self.render(message, context).await {
            Ok(message) => message,
            Err(error) => return Ok(Err(error)),
        };
        let Some(expires_in_seconds) = oa_domain::agent::parse_duration_seconds(expires_in) else {
            return Ok(Err(StepError::new(
                "invalid_step",
                format!("expires_in {expires_in:?} is not a duration"),
            )));
        };
        let caller = Caller::service("worker", at.org_id);
        let request = OpenGateRequest {
            execution_id: at.execution_id.to_owned(),
            agent_id: at.agent_id.to_owned(),
            step_id: step.id.clone(),
            message: message.clone(),
            approvers: approvers.clone().unwrap_or_else(|| vec!["admin".into(), "technician".into()]),
            expires_in_seconds,
            on_timeout: on_timeout.as_str().to_owned(),
            escalate_to: escalate_to.clone().unwrap_or_default(),
        };
        let opened =
            self.approvals.clone().open_gate(oa_auth::service::outgoing(request, &caller, &self.token)).await;
        let gate: Value = match opened {
            Ok(response) => serde_json::from_str(&response.into_inner().approval_json)?,
            Err(status) => {
                return Err(crate::delivery::Unavailable::new("approvals", status.message()).into());
            }
        };
        let approval_id = gate["id"].as_str().unwrap_or_default().to_owned();
        if gate["status"] == "pending" {
            let mut not_announced = None;
            if let Some(notify) = notify {
                not_announced = self.announce(&step.id, &gate, notify, context, at).await?;
            }
            let mut waiting = json!({
                "approval_id": approval_id,
                "status": "pending",
                "message": message,
                "approvers": gate["approvers"],
                "expires_at": gate["expires_at"],
                "escalated_at": gate["escalated_at"],
            });
            if let Some(reason) = not_announced {
                waiting["not_announced_because"] = json!(reason);
            }
            return Ok(Ok(StepResult::Waiting { gate: waiting }));
        }
        let decision = gate["outcome"].as_str().unwrap_or("denied");
        let output = json!({
            "approval_id": approval_id,
            "decision": decision,
            "status": gate["status"],
            "decided_by": gate["decided_by"],
            "decided_at": gate["decided_at"],
            "note": gate["note"],
        });
        let on_deny = matches!(&step.kind, StepKind::Approval { on_deny: Some(_), .. });
        if decision == "approved" || on_deny {
            return Ok(Ok(StepResult::Done { output, credits: 0 }));
        }
        let by = gate["decided_by"].as_str().unwrap_or("unknown");
        let (code, what) = if gate["status"] == "expired" {
            (
                "approval_expired",
                format!(
                    "expired without a decision (on_timeout: {})",
                    gate["on_timeout"].as_str().unwrap_or("deny")
                ),
            )
        } else {
            ("approval_denied", format!("denied by {by}"))
        };
        let note = gate["note"].as_str().map(|n| format!(": {n}")).unwrap_or_default();
        Ok(Err(StepError::new(code, format!("Approval {approval_id} {what}{note}"))))
    }

    /// Sends each recipient of `notify` the gate's message and a link only they can use, once.
    async fn announce(
        &self,
        step_id: &str,
        gate: &Value,
        notify: &oa_domain::agent::ApprovalNotify,
        context: &Value,
        at: &StepAt<'_>,
    ) -> anyhow::Result<Option<String>> {
        let approval_id = gate["id"].as_str().unwrap_or_default();
        let candidates = match expand_contacts(&notify.recipients, at.settings) {
            Ok(candidates) => candidates,
            Err(reason) => return Ok(Some(reason)),
        };
        let rendered = match self.render_all(&candidates, context).await {
            Ok(recipients) => recipients,
            Err(error) => {
                tracing::warn!(approval_id, error = error.message, "cannot render the approval's recipients");
                return Ok(Some("its recipients could not be rendered".into()));
            }
        };
        // A link decides the gate: it goes to the org's own contacts and nobody else.
        let (recipients, strangers): (Vec<String>, Vec<String>) =
            rendered.into_iter().partition(|recipient| at.settings.is_contact(recipient));
        if !strangers.is_empty() {
            tracing::warn!(
                approval_id,
                refused = strangers.len(),
                "approval link recipients not among the org's contacts"
            );
        }
        if recipients.is_empty() {
            return Ok(Some("no recipient is one of the org's contacts".into()));
        }
        let key = format!("{}:{approval_id}:announce", at.execution_id);
        let announced = self
            .once(at.org_id, at.execution_id, step_id, &key, || async {
                let caller = Caller::service("worker", at.org_id);
                let request =
                    MintLinksRequest { approval_id: approval_id.to_owned(), recipients: recipients.clone() };
                let links = match self
                    .approvals
                    .clone()
                    .mint_links(oa_auth::service::outgoing(request, &caller, &self.token))
                    .await
                {
                    Ok(response) => response.into_inner().links,
                    Err(status) => return Err(StepError::new("unavailable", status.message())),
                };
                let message = gate["message"].as_str().unwrap_or_default();
                let expires = gate["expires_at"].as_str().unwrap_or_default();
                let subject = format!("Approval needed: {}", message.chars().take(80).collect::<String>());
                let mut delivered = Vec::new();
                for (index, recipient) in recipients.iter().enumerate() {
                    let link = links.get(recipient).map(String::as_str).unwrap_or_default();
                    let body = format!("{message}\n\nApprove or deny (expires {expires}): {link}");
                    let to = std::slice::from_ref(recipient);
                    let webhook = at.settings.webhook(&notify.channel);
                    match self
                        .outbound
                        .notify(
                            &notify.channel,
                            to,
                            Some(&subject),
                            &body,
                            &format!("{key}:{index}"),
                            webhook,
                        )
                        .await
                    {
                        Ok(_) => delivered.push(recipient.clone()),
                        // A channel failure does not hold the gate: it stays decidable in the API.
                        Err(error) => tracing::warn!(
                            approval_id,
                            recipient,
                            error = error.message,
                            "approval announcement not delivered"
                        ),
                    }
                }
                Ok(json!({ "delivered": delivered }))
            })
            .await?;
        // Without links nothing was sent; the work is retried.
        if let Err(error) = announced {
            return Err(crate::delivery::Unavailable::new("approvals", error.message).into());
        }
        Ok(None)
    }

    async fn execute(
        &self,
        step: &Step,
        context: &Value,
        at: &StepAt<'_>,
    ) -> anyhow::Result<Result<StepResult, StepError>> {
        let (key, org_id, execution_id) = (at.key, at.org_id, at.execution_id);
        let done = |output: Value| StepResult::Done { output, credits: 0 };
        Ok(match &step.kind {
            StepKind::Transform { output } => self.render_map(output, context).await.map(done),
            StepKind::AiReason { model_tier, prompt, output_schema, system_prompt } => {
                let rendered = async {
                    let prompt = self.render(prompt, context).await?;
                    let system = self.render_optional(system_prompt.as_deref(), context).await?;
                    let size = prompt.len() + system.as_deref().map_or(0, str::len);
                    let limit = self.limits.max_prompt_bytes;
                    if size > limit {
                        return Err(StepError::new(
                            "prompt_too_large",
                            format!("the rendered prompt is {size} bytes, more than the limit of {limit}"),
                        ));
                    }
                    Ok::<_, StepError>((prompt, system))
                }
                .await;
                match rendered {
                    Err(error) => Err(error),
                    Ok((prompt, system)) => {
                        self.metered_reason(
                            at,
                            &step.id,
                            model_tier,
                            system.as_deref(),
                            &prompt,
                            output_schema,
                        )
                        .await?
                    }
                }
            }
            StepKind::Notification { channel, recipients, subject, body } => {
                let candidates = match expand_contacts(recipients, at.settings) {
                    Ok(candidates) => candidates,
                    Err(reason) => return Ok(Ok(StepResult::Skipped { reason })),
                };
                let webhook = at.settings.webhook(channel);
                let rendered = async {
                    let recipients = self.render_all(&candidates, context).await?;
                    let subject = self.render_optional(subject.as_deref(), context).await?;
                    Ok::<_, StepError>((recipients, subject, self.render(body, context).await?))
                }
                .await;
                let needs_webhook = matches!(channel.as_str(), "slack" | "teams")
                    && webhook.is_none()
                    && rendered
                        .as_ref()
                        .is_ok_and(|(recipients, _, _)| recipients.iter().any(|r| !is_url(r)));
                if needs_webhook {
                    let reason = format!("the org has no {channel} webhook in its settings");
                    return Ok(Ok(StepResult::Skipped { reason }));
                }
                match rendered {
                    Err(error) => Err(error),
                    Ok((recipients, subject, body)) => self
                        .once(org_id, execution_id, &step.id, key, || async {
                            // One budget for every recipient together: a slow endpoint cannot hold
                            // the worker for recipients x timeout x retries.
                            let budget = std::time::Duration::from_millis(self.limits.notification_budget_ms);
                            let sending = self.outbound.notify(
                                channel,
                                &recipients,
                                subject.as_deref(),
                                &body,
                                key,
                                webhook,
                            );
                            tokio::time::timeout(budget, sending).await.unwrap_or_else(|_| {
                                Err(StepError::new(
                                    "delivery_failed",
                                    format!(
                                        "the notification ran out of its {} ms budget",
                                        budget.as_millis()
                                    ),
                                ))
                            })
                        })
                        .await?
                        .map(done),
                }
            }
            StepKind::Action { action, params } => {
                let Some(operation) = oa_domain::actions::operation(action) else {
                    let error = format!("{action} is not an operation of the action catalogue");
                    return Ok(Err(StepError::new("invalid_action", error)));
                };
                // Whatever the `when` conditions said: a destructive operation runs only after a
                // gate of this execution was approved by a human. Model output cannot stand in.
                if operation.destructive && !at.human_approved {
                    return Ok(Err(StepError::new(
                        "approval_required",
                        format!(
                            "{action} is destructive and runs only after a human approved it in this execution; no approval gate before it was approved"
                        ),
                    )));
                }
                match self
                    .render_map(params, context)
                    .await
                    .and_then(|params| fits_operation(operation, params))
                {
                    Err(error) => Err(error),
                    Ok(params) => self
                        .once(org_id, execution_id, &step.id, key, || {
                            self.outbound.act(org_id, operation, &params, key)
                        })
                        .await?
                        .map(done),
                }
            }
            StepKind::Approval { .. } => self.gate(step, context, at).await?,
        })
    }
}
