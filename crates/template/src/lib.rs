//! Templates in agent steps: `{{event_payload.ticket_id}}`, `{{steps.classify.output.priority}}`,
//! and `when` conditions, on minijinja with a sandbox: no file loader, strict undefined values,
//! a fuel budget and a recursion limit, so a template can neither read anything outside its
//! context nor run for long.
//!
//! This crate knows nothing of agents; it parses, lists the variables a template refers to, and
//! renders.

pub mod isolated;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};

/// The roots a step template may read.
pub const ROOTS: [&str; 4] = ["event_payload", "event", "steps", "org"];

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

/// The most one render may write. Fuel bounds how long a template runs, not how much it writes:
/// `{% for i in range(1000) %}{{ "x" * 100000000 }}{% endfor %}` would otherwise grow the worker
/// by a hundred gigabytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Collects a render's output and refuses to grow past its limit; the render stops at once.
struct Capped {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + bytes.len() > self.limit {
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a template only substitutes values: text and `{{ path }}` expressions where a path is
/// a name followed by `.name` or `[index]` parts, with no filter, operator, call, statement or
/// comment. Such a template cannot build anything larger than the values it reads, which are in
/// memory already, so it may be rendered without a memory-capped helper process.
pub fn is_plain_substitution(source: &str) -> bool {
    let mut rest = source;
    loop {
        let Some(open) = rest.find('{') else { return true };
        let after = &rest[open + 1..];
        match after.as_bytes().first() {
            Some(b'%' | b'#') => return false,
            Some(b'{') => {
                let Some(close) = after[1..].find("}}") else { return false };
                if !is_path(after[1..1 + close].trim_matches(' ')) {
                    return false;
                }
                rest = &after[1 + close + 2..];
            }
            _ => rest = after,
        }
    }
}

/// `name(.name|[digits])*`, names of ASCII letters, digits and `_` not starting with a digit.
fn is_path(expression: &str) -> bool {
    let name = |part: &str| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let mut parts = expression.split('.');
    let valid_part = |part: &str| {
        let (head, indexes) = part.split_once('[').map_or((part, ""), |(h, i)| (h, i));
        name(head)
            && (indexes.is_empty()
                || indexes.strip_suffix(']').is_some_and(|inner| {
                    inner.split("][").all(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                }))
    };
    parts.all(valid_part) && !expression.is_empty()
}

/// Renders a text template against a JSON context, writing at most [`MAX_OUTPUT_BYTES`].
pub fn render(source: &str, context: &serde_json::Value) -> Result<String, TemplateError> {
    render_limited(source, context, MAX_OUTPUT_BYTES)
}

/// Renders a text template, refusing output over `limit` bytes with an error that says so.
pub fn render_limited(
    source: &str,
    context: &serde_json::Value,
    limit: usize,
) -> Result<String, TemplateError> {
    let template = environment().template_from_str(source).map_err(|e| describe(&e))?;
    let mut capped = Capped { out: Vec::new(), limit };
    if let Err(error) = template.render_captured_to(context, &mut capped) {
        if error.kind() == minijinja::ErrorKind::WriteFailure {
            return Err(TemplateError(format!(
                "the rendered text is larger than the limit of {limit} bytes"
            )));
        }
        return Err(describe(&error));
    }
    String::from_utf8(capped.out).map_err(|_| TemplateError("the rendered text is not UTF-8".into()))
}

/// Evaluates a `when` expression; it holds when its value is truthy.
pub fn evaluate(expression: &str, context: &serde_json::Value) -> Result<bool, TemplateError> {
    let compiled = environment().compile_expression(expression).map_err(|e| describe(&e))?;
    let value = compiled.eval(context).map_err(|e| describe(&e))?;
    Ok(value.is_true())
}

/// The peak resident memory of this process (nextest runs each test in a process of its own).
#[cfg(test)]
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_substitutions_are_told_from_templates_that_compute() {
        for plain in [
            "",
            "no template at all, {not one}",
            "{{ event_payload.ticket_id }}",
            "{{event.event_type}} on {{ steps.s0.output.v }}",
            "{{ event_payload.items[0].name }} and {{ steps.triage.output }}",
            "}} stray closers {",
        ] {
            assert!(is_plain_substitution(plain), "{plain:?} is plain");
        }
        for computing in [
            "{{ event_payload.host | upper }}",
            "{{ a ~ a }}",
            "{% for x in steps %}{{ x }}{% endfor %}",
            "{# a comment #}",
            "{{ range(10) }}",
            "{{ a[b] }}",
            "{{ a[0 }}",
            "{{- a -}}",
            "{{ }}",
            "{{ a.0 }}",
            "{{ event_payload.host",
            "{{ a }} {{ b * 2 }}",
        ] {
            assert!(!is_plain_substitution(computing), "{computing:?} computes");
        }
    }

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
    fn a_template_that_multiplies_strings_past_the_cap_fails_and_memory_stays_bounded() {
        let before = peak_rss_bytes();
        let context = json!({});
        // Unbounded, this writes 100 x 100 MB.
        let error =
            render("{% for i in range(100) %}{{ 'x' * 100000000 }}{% endfor %}", &context).unwrap_err();
        assert!(error.0.contains("larger than the limit"), "{error}");
        let error = render("{{ 'x' * 1000000000 }}", &context).unwrap_err();
        assert!(error.0.contains("too large"), "{error}");
        let small = render_limited("{% for i in range(10) %}ab{% endfor %}", &context, 20).unwrap();
        assert_eq!(small.len(), 20);
        assert!(render_limited("{% for i in range(11) %}ab{% endfor %}", &context, 20).is_err());
        let grown = peak_rss_bytes().saturating_sub(before);
        assert!(grown < 400 * 1024 * 1024, "the render grew the process by {grown} bytes");
    }

    #[test]
    fn conditions_evaluate_to_booleans() {
        let context =
            json!({"event_payload": {"priority": "p1"}, "steps": {"c": {"output": {"score": 0.9}}}});
        assert!(evaluate("event_payload.priority == 'p1'", &context).unwrap());
        assert!(!evaluate("steps.c.output.score < 0.5", &context).unwrap());
    }
}
