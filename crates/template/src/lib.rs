//! Templates in agent steps: `{{event_payload.ticket_id}}`, `{{steps.classify.output.priority}}`,
//! and `when` conditions, on minijinja with a sandbox: no file loader, strict undefined values,
//! a fuel budget and a recursion limit, so a template can neither read anything outside its
//! context nor run for long.
//!
//! This crate knows nothing of agents; it parses, lists the variables a template refers to, and
//! renders.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};

/// The roots a step template may read.
pub const ROOTS: [&str; 3] = ["event_payload", "event", "steps"];

/// Fuel for one render: generous for real templates, fatal to loops that never end.
const FUEL: u64 = 50_000;

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(32);
        // Templates render into JSON strings and messages, never HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env
    })
}

/// A template or expression that failed to parse, with minijinja's explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn describe(error: &minijinja::Error) -> TemplateError {
    let detail = error.detail().map(|d| format!(": {d}")).unwrap_or_default();
    TemplateError(format!("{}{detail}", error.kind()))
}

/// Parses a text template and returns the dotted variable paths it reads
/// (`event_payload.ticket_id`, `steps.classify.output.priority`).
pub fn template_references(source: &str) -> Result<BTreeSet<String>, TemplateError> {
    let template = environment().template_from_str(source).map_err(|e| describe(&e))?;
    Ok(template.undeclared_variables(true).into_iter().collect())
}

/// Parses a `when` expression and returns the dotted variable paths it reads.
pub fn expression_references(expression: &str) -> Result<BTreeSet<String>, TemplateError> {
    let compiled = environment().compile_expression(expression).map_err(|e| describe(&e))?;
    Ok(compiled.undeclared_variables(true).into_iter().collect())
}

/// Renders a text template against a JSON context.
pub fn render(source: &str, context: &serde_json::Value) -> Result<String, TemplateError> {
    let template = environment().template_from_str(source).map_err(|e| describe(&e))?;
    template.render(context).map_err(|e| describe(&e))
}

/// Evaluates a `when` expression; it holds when its value is truthy.
pub fn evaluate(expression: &str, context: &serde_json::Value) -> Result<bool, TemplateError> {
    let compiled = environment().compile_expression(expression).map_err(|e| describe(&e))?;
    let value = compiled.eval(context).map_err(|e| describe(&e))?;
    Ok(value.is_true())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_name_the_full_dotted_path() {
        let refs =
            template_references("P1: {{ event_payload.ticket_id }} {{ steps.classify.output.priority }}")
                .unwrap();
        assert!(refs.contains("event_payload.ticket_id"), "{refs:?}");
        assert!(refs.contains("steps.classify.output.priority"), "{refs:?}");
    }

    #[test]
    fn a_template_that_does_not_parse_is_an_error() {
        assert!(template_references("{{ event_payload.ticket_id ").is_err());
        assert!(expression_references("event_payload.priority ==").is_err());
    }

    #[test]
    fn rendering_reads_only_its_context_and_refuses_undefined_values() {
        let context = json!({"event_payload": {"ticket_id": "tkt_1"}});
        assert_eq!(render("T {{ event_payload.ticket_id }}", &context).unwrap(), "T tkt_1");
        assert!(render("{{ event_payload.missing.deeper }}", &context).is_err());
        assert_eq!(render("<b>{{ event_payload.ticket_id }}</b>", &context).unwrap(), "<b>tkt_1</b>");
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let context = json!({});
        let error = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &context,
        );
        assert!(error.is_err());
    }

    #[test]
    fn conditions_evaluate_to_booleans() {
        let context =
            json!({"event_payload": {"priority": "p1"}, "steps": {"c": {"output": {"score": 0.9}}}});
        assert!(evaluate("event_payload.priority == 'p1'", &context).unwrap());
        assert!(!evaluate("steps.c.output.score < 0.5", &context).unwrap());
    }
}
