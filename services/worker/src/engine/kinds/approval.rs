//! `approval`: opens the step's gate (or finds it open, when resuming) and reads what was decided.
//! The first time, the recipients in `notify` get the message with a signed link of their own,
//! once each. While the gate is pending the step waits; nothing is held while a human decides.

use oa_domain::Caller;
use oa_domain::agent::{ApprovalNotify, Step, StepKind};
use oa_proto::approvals::{MintLinksRequest, OpenGateRequest};
use serde_json::{Value, json};

use super::{Outcome, StepResult, StepRun, expand_contacts};
use crate::delivery::Unavailable;
use crate::engine::Engine;
use crate::providers::StepError;

pub async fn run(engine: &Engine, step: &Step, context: &Value, run: &StepRun<'_>) -> Outcome {
    let StepKind::Approval { message, approvers, expires_in, on_timeout, escalate_to, notify, on_deny } =
        &step.kind
    else {
        unreachable!("approval::run runs approval steps");
    };
    let message = match engine.templates.render(message, context).await {
        Ok(message) => message,
        Err(error) => return Ok(Err(error)),
    };
    let Some(expires_in_seconds) = oa_domain::agent::parse_duration_seconds(expires_in) else {
        let error = format!("expires_in {expires_in:?} is not a duration");
        return Ok(Err(StepError::new("invalid_step", error)));
    };
    let caller = Caller::service("worker", run.org_id);
    let request = OpenGateRequest {
        execution_id: run.execution_id.to_owned(),
        agent_id: run.agent_id.to_owned(),
        step_id: step.id.clone(),
        message: message.clone(),
        approvers: approvers.clone().unwrap_or_else(|| vec!["admin".into(), "technician".into()]),
        expires_in_seconds,
        on_timeout: on_timeout.as_str().to_owned(),
        escalate_to: escalate_to.clone().unwrap_or_default(),
    };
    let opened =
        engine.approvals.clone().open_gate(oa_auth::service::outgoing(request, &caller, &engine.token)).await;
    let gate: Value = match opened {
        Ok(response) => serde_json::from_str(&response.into_inner().approval_json)?,
        Err(status) => return Err(Unavailable::new("approvals", status.message()).into()),
    };
    if gate["status"] != "pending" {
        return Ok(decided(&gate, on_deny.is_some()));
    }
    let not_announced = match notify {
        Some(notify) => announce(engine, &gate, notify, context, run).await?,
        None => None,
    };
    Ok(Ok(StepResult::Waiting { gate: waiting(&gate, &message, not_announced) }))
}

/// What the trace shows while the gate is open.
fn waiting(gate: &Value, message: &str, not_announced: Option<String>) -> Value {
    let mut waiting = json!({
        "approval_id": gate["id"].as_str().unwrap_or_default(),
        "status": "pending",
        "message": message,
        "approvers": gate["approvers"],
        "expires_at": gate["expires_at"],
        "escalated_at": gate["escalated_at"],
    });
    if let Some(reason) = not_announced {
        waiting["not_announced_because"] = json!(reason);
    }
    waiting
}

/// The step's result once the gate is decided: approved, or denied with an `on_deny` step to go
/// to, completes it; otherwise the denial (or the expiry) fails it.
fn decided(gate: &Value, has_on_deny: bool) -> Result<StepResult, StepError> {
    let approval_id = gate["id"].as_str().unwrap_or_default();
    let decision = gate["outcome"].as_str().unwrap_or("denied");
    if decision == "approved" || has_on_deny {
        return Ok(StepResult::done(json!({
            "approval_id": approval_id,
            "decision": decision,
            "status": gate["status"],
            "decided_by": gate["decided_by"],
            "decided_at": gate["decided_at"],
            "note": gate["note"],
        })));
    }
    let (code, what) = if gate["status"] == "expired" {
        let on_timeout = gate["on_timeout"].as_str().unwrap_or("deny");
        ("approval_expired", format!("expired without a decision (on_timeout: {on_timeout})"))
    } else {
        ("approval_denied", format!("denied by {}", gate["decided_by"].as_str().unwrap_or("unknown")))
    };
    let note = gate["note"].as_str().map(|n| format!(": {n}")).unwrap_or_default();
    Err(StepError::new(code, format!("Approval {approval_id} {what}{note}")))
}

/// Where a completed approval step sends the run: its `on_deny` step when the gate was denied.
pub fn on_deny_of<'a>(step: &'a Step, output: &Value) -> Option<&'a str> {
    match &step.kind {
        StepKind::Approval { on_deny: Some(target), .. } if output["decision"] == "denied" => {
            Some(target.as_str())
        }
        _ => None,
    }
}

/// Whether an approval gate before `position` was approved by a human in this execution (its
/// gate record says `approved`, not `expired`).
pub fn human_approved_before(steps: &[Step], position: usize, context: &Value) -> bool {
    steps[..position].iter().any(|step| {
        matches!(step.kind, StepKind::Approval { .. })
            && context["steps"][&step.id]["output"]["status"] == "approved"
    })
}

/// Sends each recipient of `notify` the gate's message and a link only they can use, once. Answers
/// why nothing was announced, if nothing was; an outage of the approvals service is retried.
async fn announce(
    engine: &Engine,
    gate: &Value,
    notify: &ApprovalNotify,
    context: &Value,
    run: &StepRun<'_>,
) -> anyhow::Result<Option<String>> {
    let approval_id = gate["id"].as_str().unwrap_or_default();
    let candidates = match expand_contacts(&notify.recipients, run.settings) {
        Ok(candidates) => candidates,
        Err(reason) => return Ok(Some(reason)),
    };
    let rendered = match engine.templates.render_all(&candidates, context).await {
        Ok(recipients) => recipients,
        Err(error) => {
            tracing::warn!(approval_id, error = error.message, "cannot render the approval's recipients");
            return Ok(Some("its recipients could not be rendered".into()));
        }
    };
    let recipients = match contacts_only(rendered, run, approval_id) {
        Ok(recipients) => recipients,
        Err(reason) => return Ok(Some(reason)),
    };
    let key = format!("{}:{approval_id}:announce", run.execution_id);
    let limit = engine.limits.max_step_output_bytes;
    let announced = run
        .effects
        .once(&key, limit, || async {
            let caller = Caller::service("worker", run.org_id);
            let request =
                MintLinksRequest { approval_id: approval_id.to_owned(), recipients: recipients.clone() };
            let links = match engine
                .approvals
                .clone()
                .mint_links(oa_auth::service::outgoing(request, &caller, &engine.token))
                .await
            {
                Ok(response) => response.into_inner().links,
                Err(status) => return Err(StepError::new("unavailable", status.message())),
            };
            let message = gate["message"].as_str().unwrap_or_default();
            let expires = gate["expires_at"].as_str().unwrap_or_default();
            let subject = format!("Approval needed: {}", message.chars().take(80).collect::<String>());
            let webhook = run.settings.webhook(notify.channel.as_str());
            let mut delivered = Vec::new();
            for (index, recipient) in recipients.iter().enumerate() {
                let link = links.get(recipient).map(String::as_str).unwrap_or_default();
                let body = format!("{message}\n\nApprove or deny (expires {expires}): {link}");
                let to = std::slice::from_ref(recipient);
                let channel = notify.channel.as_str();
                match engine
                    .outbound
                    .notify(channel, to, Some(&subject), &body, &format!("{key}:{index}"), webhook)
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
        .await;
    // Without links nothing was sent; the work is retried.
    if let Err(error) = announced {
        return Err(Unavailable::new("approvals", error.message).into());
    }
    Ok(None)
}

/// The rendered recipients that are among the org's contacts: a link decides the gate, so it goes
/// to nobody else. `Err` when none is.
fn contacts_only(rendered: Vec<String>, run: &StepRun<'_>, approval_id: &str) -> Result<Vec<String>, String> {
    let (recipients, strangers): (Vec<String>, Vec<String>) =
        rendered.into_iter().partition(|recipient| run.settings.is_contact(recipient));
    if !strangers.is_empty() {
        tracing::warn!(
            approval_id,
            refused = strangers.len(),
            "approval link recipients not among the org's contacts"
        );
    }
    if recipients.is_empty() {
        return Err("no recipient is one of the org's contacts".into());
    }
    Ok(recipients)
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::*;
    use crate::engine::effects::Effects;

    fn gate(status: &str, outcome: Option<&str>) -> Value {
        json!({"id": "apr_1", "status": status, "outcome": outcome, "decided_by": "usr_lead",
               "decided_at": "2026-12-01T10:00:00Z", "note": "not now", "on_timeout": "deny",
               "approvers": ["admin"], "expires_at": "2026-12-01T12:00:00Z", "escalated_at": null})
    }

    fn step(on_deny: Option<&str>) -> Step {
        serde_json::from_value(json!({"id": "gate", "type": "approval", "message": "Isolate?",
                                      "expires_in": "1h", "on_deny": on_deny}))
        .unwrap()
    }

    #[test]
    fn an_approval_completes_the_step() {
        let Ok(StepResult::Done { output, credits: 0 }) = decided(&gate("approved", Some("approved")), false)
        else {
            panic!("an approved gate did not complete the step");
        };
        assert_eq!(output["decision"], "approved");
        assert_eq!(output["decided_by"], "usr_lead");
        assert_eq!(on_deny_of(&step(Some("tell")), &output), None);
    }

    #[test]
    fn a_denial_fails_the_step_unless_it_has_somewhere_to_go() {
        let Err(error) = decided(&gate("denied", Some("denied")), false) else {
            panic!("a denial completed")
        };
        assert_eq!(error.code, "approval_denied");
        assert_eq!(error.message, "Approval apr_1 denied by usr_lead: not now");
        let Ok(StepResult::Done { output, .. }) = decided(&gate("denied", Some("denied")), true) else {
            panic!("a denial with on_deny did not complete the step");
        };
        assert_eq!(on_deny_of(&step(Some("tell")), &output), Some("tell"));
        assert_eq!(on_deny_of(&step(None), &output), None);
    }

    #[test]
    fn an_expiry_says_what_on_timeout_did() {
        let Err(error) = decided(&gate("expired", Some("denied")), false) else {
            panic!("an expiry completed")
        };
        assert_eq!(error.code, "approval_expired");
        assert!(error.message.starts_with("Approval apr_1 expired without a decision (on_timeout: deny)"));
    }

    #[test]
    fn the_waiting_trace_says_why_nobody_was_told() {
        let shown = waiting(&gate("pending", None), "Isolate srv-01?", Some("no recipient".into()));
        assert_eq!(shown["status"], "pending");
        assert_eq!(shown["approval_id"], "apr_1");
        assert_eq!(shown["message"], "Isolate srv-01?");
        assert_eq!(shown["not_announced_because"], "no recipient");
        assert!(waiting(&gate("pending", None), "m", None).get("not_announced_because").is_none());
    }

    #[test]
    fn only_a_human_approval_before_the_step_counts() {
        let steps = vec![step(None), step(None)];
        let approved = json!({"steps": {"gate": {"output": {"status": "approved"}}}});
        let expired = json!({"steps": {"gate": {"output": {"status": "expired"}}}});
        assert!(human_approved_before(&steps, 1, &approved));
        assert!(!human_approved_before(&steps, 0, &approved));
        assert!(!human_approved_before(&steps, 1, &expired));
    }

    #[test]
    fn links_go_to_the_orgs_contacts_only() {
        let settings = settings();
        let run = StepRun {
            org_id: "org_a",
            execution_id: "exe_1",
            agent_id: "agt_1",
            step_id: "gate",
            key: "exe_1:gate:1".into(),
            human_approved: false,
            settings: &settings,
            effects: Effects::default(),
        };
        let rendered = vec!["+15550001111".to_owned(), "+19990000000".to_owned()];
        assert_eq!(contacts_only(rendered, &run, "apr_1").unwrap(), ["+15550001111"]);
        let strangers = contacts_only(vec!["+19990000000".to_owned()], &run, "apr_1");
        assert_eq!(strangers.unwrap_err(), "no recipient is one of the org's contacts");
    }
}
