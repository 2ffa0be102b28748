//! `action`: one operation of the action catalogue on a product, with rendered params that must
//! fit the operation's schema. A destructive operation runs only after a human approved a gate of
//! this execution; the call is made once per attempt, under the step's idempotency key.

use oa_domain::actions::Operation;
use serde_json::{Map, Value};

use super::{StepResult, StepRun};
use crate::engine::Engine;
use crate::providers::StepError;

pub async fn run(
    engine: &Engine,
    action: &str,
    params: &Map<String, Value>,
    context: &Value,
    run: &StepRun<'_>,
) -> Result<StepResult, StepError> {
    let operation = allowed(action, run.human_approved)?;
    let params = fits(operation, engine.templates.render_map(params, context).await?)?;
    let limit = engine.limits.max_step_output_bytes;
    run.effects
        .once(&run.key, limit, || engine.outbound.act(run.org_id, operation, &params, &run.key))
        .await
        .map(StepResult::done)
}

/// The operation `action` names, when this execution may run it. Whatever the `when` conditions
/// said, a destructive operation needs a human's approval: model output cannot stand in for it.
fn allowed(action: &str, human_approved: bool) -> Result<&'static Operation, StepError> {
    let Some(operation) = oa_domain::actions::operation(action) else {
        let error = format!("{action} is not an operation of the action catalogue");
        return Err(StepError::new("invalid_action", error));
    };
    if operation.destructive && !human_approved {
        return Err(StepError::new(
            "approval_required",
            format!(
                "{action} is destructive and runs only after a human approved it in this execution; no approval gate before it was approved"
            ),
        ));
    }
    Ok(operation)
}

/// Rendered params, checked against the operation's schema before anything is sent.
fn fits(operation: &Operation, params: Value) -> Result<Value, StepError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_operations_are_refused() {
        assert_eq!(allowed("psa.delete_everything", true).unwrap_err().code, "invalid_action");
    }

    #[test]
    fn destructive_operations_need_a_human_approval() {
        let error = allowed("rmm.isolate_device", false).unwrap_err();
        assert_eq!(error.code, "approval_required");
        assert!(error.message.contains("rmm.isolate_device is destructive"));
        assert!(allowed("rmm.isolate_device", true).is_ok());
        assert!(allowed("psa.create_ticket", false).is_ok());
    }

    #[test]
    fn params_must_fit_the_operations_schema() {
        let operation = allowed("psa.create_ticket", false).unwrap();
        let good = json!({"subject": "Disk full", "priority": "p2"});
        assert_eq!(fits(operation, good.clone()).unwrap(), good);
        let error = fits(operation, json!({"priority": "urgent", "extra": 1})).unwrap_err();
        assert_eq!(error.code, "invalid_params");
        assert!(error.message.starts_with("the params of psa.create_ticket do not fit its schema"));
        assert!(error.message.contains("subject"), "{}", error.message);
    }
}
