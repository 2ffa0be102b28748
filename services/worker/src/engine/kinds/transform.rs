//! `transform`: renders its `output` map; every string value is a template, other values stay as
//! they are. It reaches nothing outside, so it needs no idempotency key.

use serde_json::{Map, Value};

use super::StepResult;
use crate::engine::templates::Templates;
use crate::providers::StepError;

pub async fn run(
    templates: &Templates,
    output: &Map<String, Value>,
    context: &Value,
) -> Result<StepResult, StepError> {
    templates.render_map(output, context).await.map(StepResult::done)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::templates;

    #[tokio::test]
    async fn renders_strings_and_keeps_other_values() {
        let output = json!({"summary": "{{ event_payload.host }} is down", "count": 3, "flags": [true]});
        let context = json!({"event_payload": {"host": "srv-01"}});
        let Ok(StepResult::Done { output, credits }) =
            run(&templates::for_tests(), output.as_object().unwrap(), &context).await
        else {
            panic!("the transform did not complete");
        };
        assert_eq!(output, json!({"summary": "srv-01 is down", "count": 3, "flags": [true]}));
        assert_eq!(credits, 0);
    }

    #[tokio::test]
    async fn a_broken_template_fails_the_step() {
        let output = json!({"summary": "{{ event_payload.host "});
        let Err(error) = run(&templates::for_tests(), output.as_object().unwrap(), &json!({})).await else {
            panic!("a broken template rendered");
        };
        assert_eq!(error.code, "template_error");
        assert!(error.message.contains("event_payload.host"), "{}", error.message);
    }
}
