//! `ai_reason`: renders the prompt and calls the tier's model, metered. The tier's price is
//! reserved before the call (no call when the org has too little left), committed after a good
//! answer and released after a failure. A credits outage is an infrastructure error: the work is
//! retried, and the same reservation key (the step's idempotency key) charges once.

use std::collections::BTreeMap;

use oa_auth::service::outgoing;
use oa_domain::agent::ModelTier;
use oa_domain::{ApiError, Caller, ErrorCode};
use oa_proto::credits::{CommitRequest, ReleaseRequest, ReserveRequest};
use serde_json::Value;

use super::{Outcome, StepResult, StepRun};
use crate::delivery::Unavailable;
use crate::engine::Engine;
use crate::providers::StepError;

pub struct Prompt<'a> {
    pub text: &'a str,
    pub system: Option<&'a str>,
    pub schema: &'a Value,
}

pub async fn run(
    engine: &Engine,
    tier: ModelTier,
    prompt: Prompt<'_>,
    context: &Value,
    run: &StepRun<'_>,
) -> Outcome {
    let rendered = async {
        let text = engine.templates.render(prompt.text, context).await?;
        let system = engine.templates.render_optional(prompt.system, context).await?;
        within_prompt_limit(&text, system.as_deref(), engine.limits.max_prompt_bytes)?;
        Ok::<_, StepError>((text, system))
    }
    .await;
    let (text, system) = match rendered {
        Ok(rendered) => rendered,
        Err(error) => return Ok(Err(error)),
    };
    let price = price_of(&engine.prices, tier);
    let caller = Caller::service("worker", run.org_id);
    let credits = || engine.credits.clone();
    let token = &engine.token;
    let mut reservation = None;
    if price > 0 {
        let request = ReserveRequest {
            idempotency_key: run.key.clone(),
            execution_id: run.execution_id.to_owned(),
            step_id: run.step_id.to_owned(),
            agent_id: run.agent_id.to_owned(),
            model_tier: tier.as_str().to_owned(),
            amount: price,
        };
        match credits().reserve(outgoing(request, &caller, token)).await {
            Ok(response) => reservation = Some(response.into_inner().reservation_id),
            Err(status) => return refused(&oa_proto::status::api_error(&status)),
        }
    }
    let answer = engine.llm.reason(tier.as_str(), system.as_deref(), &text, prompt.schema).await;
    if let Some(reservation_id) = reservation {
        let settled = match &answer {
            Ok(_) => {
                let request = CommitRequest { reservation_id, amount: price };
                credits().commit(outgoing(request, &caller, token)).await.map(|_| ())
            }
            Err(_) => {
                let request = ReleaseRequest { reservation_id };
                credits().release(outgoing(request, &caller, token)).await.map(|_| ())
            }
        };
        if let Err(status) = settled {
            return Err(Unavailable::new("credits", status.message()).into());
        }
    }
    Ok(answer.map(|output| StepResult::Done { output, credits: price }))
}

/// The prompt and system prompt together, refused when larger than `limit` bytes.
fn within_prompt_limit(prompt: &str, system: Option<&str>, limit: usize) -> Result<(), StepError> {
    let size = prompt.len() + system.map_or(0, str::len);
    if size > limit {
        let error = format!("the rendered prompt is {size} bytes, more than the limit of {limit}");
        return Err(StepError::new("prompt_too_large", error));
    }
    Ok(())
}

/// What a call on `tier` costs; a tier without a price is free.
fn price_of(prices: &BTreeMap<String, i64>, tier: ModelTier) -> i64 {
    prices.get(tier.as_str()).copied().unwrap_or(0)
}

/// A refused reservation: too few credits fails the step; anything else is an outage to retry.
fn refused(error: &ApiError) -> Outcome {
    if error.code == ErrorCode::CreditInsufficient {
        return Ok(Err(StepError::new("credit_insufficient", error.message.clone())));
    }
    Err(Unavailable::new("credits", &error.message).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_over_the_limit_are_refused_with_their_size() {
        assert!(within_prompt_limit("abc", Some("de"), 5).is_ok());
        let error = within_prompt_limit("abc", Some("def"), 5).unwrap_err();
        assert_eq!(error.code, "prompt_too_large");
        assert_eq!(error.message, "the rendered prompt is 6 bytes, more than the limit of 5");
    }

    #[test]
    fn tiers_are_priced_from_the_config() {
        let prices = BTreeMap::from([("quick".to_owned(), 1), ("expert".to_owned(), 25)]);
        assert_eq!(price_of(&prices, ModelTier::Expert), 25);
        assert_eq!(price_of(&prices, ModelTier::Standard), 0);
    }

    #[test]
    fn too_few_credits_fails_the_step_and_an_outage_retries() {
        let short = ApiError::new(ErrorCode::CreditInsufficient, "0 credits left");
        let Ok(Err(error)) = refused(&short) else { panic!("too few credits did not fail the step") };
        assert_eq!((error.code.as_str(), error.message.as_str()), ("credit_insufficient", "0 credits left"));
        let outage = refused(&ApiError::new(ErrorCode::ServiceUnavailable, "credits is down"));
        let error = outage.err().expect("an outage is retried");
        assert_eq!(error.downcast_ref::<Unavailable>().map(|u| u.service), Some("credits"));
    }
}
