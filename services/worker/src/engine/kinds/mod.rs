//! The step kinds. Each has its own module with a `run` that takes the step's fields, the template
//! context and the [`StepRun`], and answers a [`StepResult`] or the [`StepError`] that fails the
//! step; an `Err` of the outer `anyhow::Result` is an infrastructure failure (the work is retried).
//!
//! Adding a step kind: its variant in `oa_domain::agent::StepKind` (and its checks in the agents
//! service's `validate.rs`), one module here, and one arm in [`execute`].

mod action;
mod ai_reason;
mod approval;
mod notification;
mod transform;

use oa_domain::agent::{Step, StepKind};
use oa_domain::settings::OrgSettings;
use serde_json::Value;

pub use approval::{human_approved_before, on_deny_of};

use super::Engine;
use super::effects::Effects;
use crate::providers::StepError;

/// A step being run: whom it runs for, its idempotency key, what it may do, and the side effects
/// it already had.
pub struct StepRun<'a> {
    pub org_id: &'a str,
    pub execution_id: &'a str,
    pub agent_id: &'a str,
    pub step_id: &'a str,
    /// `execution:step:attempt`: what providers and the credits ledger deduplicate on.
    pub key: String,
    /// Whether a gate before this step was approved by a human in this execution.
    pub human_approved: bool,
    /// Who the org's messages go to, and its own webhooks.
    pub settings: &'a OrgSettings,
    pub effects: Effects,
}

pub enum StepResult {
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

impl StepResult {
    fn done(output: Value) -> StepResult {
        StepResult::Done { output, credits: 0 }
    }
}

/// What running a step gives: a result, or the error that fails it; `Err` is an infrastructure
/// failure.
pub type Outcome = anyhow::Result<Result<StepResult, StepError>>;

/// Whether a step of this kind has side effects that happen once: the runner reads their records
/// when it starts the step.
pub fn has_side_effects(kind: &StepKind) -> bool {
    matches!(kind, StepKind::Notification { .. } | StepKind::Action { .. } | StepKind::Approval { .. })
}

/// Runs one step.
pub async fn execute(engine: &Engine, step: &Step, context: &Value, run: &StepRun<'_>) -> Outcome {
    match &step.kind {
        StepKind::Transform { output } => Ok(transform::run(&engine.templates, output, context).await),
        StepKind::AiReason { model_tier, prompt, output_schema, system_prompt } => {
            let prompt =
                ai_reason::Prompt { text: prompt, system: system_prompt.as_deref(), schema: output_schema };
            ai_reason::run(engine, *model_tier, prompt, context, run).await
        }
        StepKind::Notification { channel, recipients, subject, body } => {
            let message =
                notification::Message { channel: *channel, recipients, subject: subject.as_deref(), body };
            Ok(notification::run(engine, message, context, run).await)
        }
        StepKind::Action { action, params } => Ok(action::run(engine, action, params, context, run).await),
        StepKind::Approval { .. } => approval::run(engine, step, context, run).await,
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub fn settings() -> OrgSettings {
        serde_json::from_value(json!({
            "contacts": {"on_call_sms": ["+15550001111", "+15550002222"], "security_email": ["soc@msp.example"]},
            "webhooks": {"slack": "https://hooks.slack.com/services/T/B/x"}
        }))
        .unwrap()
    }

    #[test]
    fn contact_references_expand_to_the_orgs_lists() {
        let recipients = vec!["{{ org.contacts.on_call_sms }}".to_owned(), "+15559999999".to_owned()];
        assert_eq!(
            expand_contacts(&recipients, &settings()).unwrap(),
            ["+15550001111", "+15550002222", "+15559999999"]
        );
        let empty = expand_contacts(&["{{ org.contacts.on_call_sms }}".to_owned()], &OrgSettings::default());
        assert_eq!(empty.unwrap_err(), "the org has no on_call_sms contact in its settings");
    }

    #[test]
    fn only_kinds_that_reach_outside_record_side_effects() {
        let step = |value: Value| serde_json::from_value::<Step>(value).unwrap().kind;
        assert!(!has_side_effects(&step(json!({"id": "t", "type": "transform", "output": {}}))));
        assert!(has_side_effects(&step(json!({"id": "a", "type": "action", "action": "psa.create_ticket"}))));
    }
}
