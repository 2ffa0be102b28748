//! `notification`: a message on a channel to rendered recipients, contact references expanded to
//! the org's lists. Slack and Teams need the org's webhook unless every recipient is a URL. Sent
//! once per attempt, under the step's idempotency key, within one time budget for all recipients.

use std::time::Duration;

use oa_domain::agent::Channel;
use oa_domain::settings::OrgSettings;
use serde_json::Value;

use super::{StepResult, StepRun, expand_contacts};
use crate::engine::Engine;
use crate::providers::StepError;

pub struct Message<'a> {
    pub channel: Channel,
    pub recipients: &'a [String],
    pub subject: Option<&'a str>,
    pub body: &'a str,
}

pub async fn run(
    engine: &Engine,
    message: Message<'_>,
    context: &Value,
    run: &StepRun<'_>,
) -> Result<StepResult, StepError> {
    let candidates = match expand_contacts(message.recipients, run.settings) {
        Ok(candidates) => candidates,
        Err(reason) => return Ok(StepResult::Skipped { reason }),
    };
    let templates = &engine.templates;
    let rendered = async {
        let recipients = templates.render_all(&candidates, context).await?;
        let subject = templates.render_optional(message.subject, context).await?;
        Ok::<_, StepError>((recipients, subject, templates.render(message.body, context).await?))
    }
    .await;
    let webhook = run.settings.webhook(message.channel.as_str());
    if let Ok((recipients, _, _)) = &rendered
        && let Some(reason) = missing_webhook(message.channel, recipients, run.settings)
    {
        return Ok(StepResult::Skipped { reason });
    }
    let (recipients, subject, body) = rendered?;
    let limit = engine.limits.max_step_output_bytes;
    let budget = Duration::from_millis(engine.limits.notification_budget_ms);
    run.effects
        .once(&run.key, limit, || async {
            // One budget for every recipient together: a slow endpoint cannot hold the worker for
            // recipients x timeout x retries.
            let sending = engine.outbound.notify(
                message.channel.as_str(),
                &recipients,
                subject.as_deref(),
                &body,
                &run.key,
                webhook,
            );
            tokio::time::timeout(budget, sending).await.unwrap_or_else(|_| Err(out_of_budget(budget)))
        })
        .await
        .map(StepResult::done)
}

/// Why the message cannot go out: a chat channel without the org's webhook, when a recipient is
/// not a URL of its own.
fn missing_webhook(channel: Channel, recipients: &[String], settings: &OrgSettings) -> Option<String> {
    let chat = matches!(channel, Channel::Slack | Channel::Teams);
    let needs_webhook =
        chat && settings.webhook(channel.as_str()).is_none() && recipients.iter().any(|r| !is_url(r));
    needs_webhook.then(|| format!("the org has no {channel} webhook in its settings"))
}

fn is_url(recipient: &str) -> bool {
    recipient.starts_with("https://") || recipient.starts_with("http://")
}

fn out_of_budget(budget: Duration) -> StepError {
    StepError::new(
        "delivery_failed",
        format!("the notification ran out of its {} ms budget", budget.as_millis()),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::*;

    #[test]
    fn chat_channels_need_the_orgs_webhook_unless_recipients_are_urls() {
        let names = vec!["#noc".to_owned()];
        let urls = vec!["https://hooks.example/abc".to_owned()];
        let none = OrgSettings::default();
        assert_eq!(
            missing_webhook(Channel::Teams, &names, &none).as_deref(),
            Some("the org has no teams webhook in its settings")
        );
        assert_eq!(missing_webhook(Channel::Teams, &urls, &none), None);
        assert_eq!(missing_webhook(Channel::Slack, &names, &settings()), None);
        assert_eq!(missing_webhook(Channel::Sms, &names, &none), None);
    }

    #[test]
    fn the_budget_error_names_the_budget() {
        let error = out_of_budget(Duration::from_millis(1500));
        assert_eq!(error.code, "delivery_failed");
        assert_eq!(error.message, "the notification ran out of its 1500 ms budget");
    }
}
