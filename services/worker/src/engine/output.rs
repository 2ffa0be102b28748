//! What a step may leave behind: its output (or a side effect's answer) is refused when it cannot
//! be stored, so the step fails once with a clear error instead of failing to be recorded (and
//! being run again) forever.

use serde_json::Value;

use crate::providers::StepError;

/// `output`, checked: no NUL anywhere, and at most `limit` bytes of JSON.
pub fn checked(output: Value, limit: usize) -> Result<Value, StepError> {
    within_limit(storable(output)?, limit)
}

fn storable(output: Value) -> Result<Value, StepError> {
    match oa_domain::hostile::find_nul(&output, "output") {
        None => Ok(output),
        Some(path) => Err(StepError::new(
            "invalid_output",
            format!("the step's output holds a NUL character (\\u0000) at {path}, which cannot be stored"),
        )),
    }
}

fn within_limit(output: Value, limit: usize) -> Result<Value, StepError> {
    let size = serde_json::to_vec(&output).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(StepError::new(
            "output_too_large",
            format!("the step's output is {size} bytes, more than the limit of {limit}"),
        ));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_and_oversized_outputs_are_refused() {
        assert_eq!(checked(json!({"a": "fine"}), 100).unwrap(), json!({"a": "fine"}));
        let nul = checked(json!({"a": ["x\u{0}y"]}), 100).unwrap_err();
        assert_eq!(nul.code, "invalid_output");
        assert!(nul.message.contains("output.a[0]") || nul.message.contains("output.a.0"), "{}", nul.message);
        assert_eq!(checked(json!({"a": "x".repeat(200)}), 100).unwrap_err().code, "output_too_large");
    }
}
