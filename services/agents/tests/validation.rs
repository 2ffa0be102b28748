//! The validation rules of agent definitions, one row per rule: each bad definition is refused
//! with the path of what failed, and the shipped system agents and templates all pass.

use std::collections::HashMap;

use oa_agents::validate::validate_definition;
use oa_domain::catalog::EventType;
use serde_json::{Value, json};

fn catalog() -> HashMap<String, EventType> {
    oa_domain::catalog::shipped_event_types().into_iter().map(|e| (e.id.clone(), e)).collect()
}

fn valid() -> Value {
    // The reference's example (shared with the domain and API tests), with a model step first.
    let mut definition: Value =
        serde_json::from_str(include_str!("../../../crates/domain/fixtures/p1_escalation.json")).unwrap();
    definition["steps"] = json!([
            {"type": "ai_reason", "id": "classify", "model_tier": "quick", "prompt": "Classify {{ event_payload.ticket_id }}",
             "output_schema": {"type": "object", "properties": {"urgent": {"type": "boolean"}}}},
            {"type": "notification", "id": "notify_senior", "channel": "sms", "recipients": ["+15551234567"],
             "body": "P1 escalation: {{event_payload.ticket_id}} {{ steps.classify.output.urgent }}",
             "when": "steps.classify.output.urgent"}
    ]);
    definition
}

/// Applies `change` to a valid definition.
fn with(change: impl FnOnce(&mut Value)) -> Value {
    let mut definition = valid();
    change(&mut definition);
    definition
}

#[test]
fn the_reference_definition_is_valid() {
    validate_definition(&valid(), &catalog()).unwrap();
}

#[test]
fn each_rule_refuses_with_the_failing_path() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown event type",
            with(|d| d["trigger"]["event_type"] = json!("ticket.exploded")),
            "trigger.event_type",
        ),
        ("unknown product", with(|d| d["trigger"]["source_product"] = json!("crm")), "trigger.event_type"),
        ("bad trigger type", with(|d| d["trigger"]["type"] = json!("webhook")), "trigger.type"),
        (
            "filter on a field that is not filterable",
            with(|d| d["trigger"]["filters"][0]["field"] = json!("ticket_id")),
            "trigger.filters[0].field",
        ),
        (
            "operator that does not fit an enum",
            with(|d| d["trigger"]["filters"][0]["operator"] = json!("gt")),
            "trigger.filters[0].operator",
        ),
        (
            "unknown operator",
            with(|d| d["trigger"]["filters"][0]["operator"] = json!("like")),
            "trigger.filters[0].operator",
        ),
        (
            "enum value not allowed",
            with(|d| d["trigger"]["filters"][0]["value"] = json!("p9")),
            "trigger.filters[0].value",
        ),
        (
            "enum value in a list not allowed",
            with(|d| {
                d["trigger"]["filters"][0] =
                    json!({"field": "escalated_to", "operator": "in", "value": ["p1", "urgent"]})
            }),
            "trigger.filters[0].value[1]",
        ),
        (
            "in without a list",
            with(|d| {
                d["trigger"]["filters"][0] = json!({"field": "escalated_to", "operator": "in", "value": "p1"})
            }),
            "trigger.filters[0].value",
        ),
        (
            "number compared to a string",
            with(|d| {
                d["trigger"] = json!({"type": "bus_event", "source_product": "rmm", "event_type": "disk.low",
                                      "filters": [{"field": "free_percent", "operator": "lt", "value": "ten"}]})
            }),
            "trigger.filters[0].value",
        ),
        (
            "contains on a boolean",
            with(|d| {
                d["trigger"] = json!({"type": "bus_event", "source_product": "psa", "event_type": "ticket.created",
                                      "filters": [{"field": "contact.vip", "operator": "contains", "value": true}]})
            }),
            "trigger.filters[0].operator",
        ),
        ("unknown step type", with(|d| d["steps"][1]["type"] = json!("teleport")), "steps[1].type"),
        (
            "missing step id",
            with(|d| d["steps"][1].as_object_mut().unwrap().remove("id").map(|_| ()).unwrap()),
            "steps[1].id",
        ),
        ("duplicate step id", with(|d| d["steps"][1]["id"] = json!("classify")), "steps[1].id"),
        ("malformed step id", with(|d| d["steps"][1]["id"] = json!("Notify Senior")), "steps[1].id"),
        (
            "template that does not parse",
            with(|d| d["steps"][1]["body"] = json!("P1 {{ event_payload.ticket_id ")),
            "steps[1].body",
        ),
        (
            "template naming an unknown step",
            with(|d| d["steps"][1]["body"] = json!("{{ steps.summarize.output.text }}")),
            "steps[1].body",
        ),
        (
            "template naming a later step",
            with(|d| d["steps"][0]["prompt"] = json!("{{ steps.notify_senior.output.x }}")),
            "steps[0].prompt",
        ),
        (
            "template reading an unknown root",
            with(|d| d["steps"][1]["body"] = json!("{{ secrets.api_key }}")),
            "steps[1].body",
        ),
        (
            "when that does not parse",
            with(|d| d["steps"][1]["when"] = json!("steps.classify.output.urgent ==")),
            "steps[1].when",
        ),
        (
            "when naming an unknown step",
            with(|d| d["steps"][1]["when"] = json!("steps.nope.output.x")),
            "steps[1].when",
        ),
        ("unknown model tier", with(|d| d["steps"][0]["model_tier"] = json!("ultra")), "steps[0].model_tier"),
        (
            "output schema that is not a schema",
            with(|d| d["steps"][0]["output_schema"] = json!({"type": "banana"})),
            "steps[0].output_schema",
        ),
        ("unknown channel", with(|d| d["steps"][1]["channel"] = json!("fax")), "steps[1].channel"),
        ("no recipients", with(|d| d["steps"][1]["recipients"] = json!([])), "steps[1].recipients"),
        ("email without subject", with(|d| d["steps"][1]["channel"] = json!("email")), "steps[1].subject"),
        (
            "approval with a bad expiry",
            with(|d| {
                d["steps"][1] =
                    json!({"id": "gate", "type": "approval", "message": "ok?", "expires_in": "forever"})
            }),
            "steps[1].expires_in",
        ),
        (
            "approval escalating to nobody",
            with(
                |d| d["steps"][1] = json!({"id": "gate", "type": "approval", "message": "ok?", "expires_in": "1h", "on_timeout": "escalate"}),
            ),
            "steps[1].escalate_to",
        ),
        (
            "action without a product",
            with(|d| d["steps"][1] = json!({"id": "act", "type": "action", "action": "isolate"})),
            "steps[1].action",
        ),
        (
            "transform without output",
            with(|d| d["steps"][1] = json!({"id": "t", "type": "transform", "output": {}})),
            "steps[1].output",
        ),
        ("no steps", with(|d| d["steps"] = json!([])), "steps"),
        (
            "bad cron",
            with(|d| d["trigger"] = json!({"type": "schedule", "cron": "every tuesday"})),
            "trigger.cron",
        ),
        (
            "bad time zone",
            with(|d| {
                d["trigger"] = json!({"type": "schedule", "cron": "0 8 * * 1", "timezone": "Mars/Olympus"})
            }),
            "trigger.timezone",
        ),
        (
            "client_scope of the wrong shape",
            with(|d| d["client_scope"] = json!({"clients": ["cl_1"]})),
            "client_scope",
        ),
        ("client_scope with an empty id", with(|d| d["client_scope"] = json!(["cl_1", ""])), "client_scope"),
        ("client_scope word other than all", with(|d| d["client_scope"] = json!("some")), "client_scope"),
        (
            "unknown conflict behavior",
            with(|d| d["conflict_behavior"] = json!("polite")),
            "conflict_behavior",
        ),
        ("missing name", with(|d| d["name"] = json!("")), "name"),
        ("unknown category", with(|d| d["category"] = json!("gardening")), "category"),
        ("unknown top-level field", with(|d| d["priority"] = json!(1)), "priority"),
        (
            "condition with a bad value shape",
            with(|d| d["conditions"] = json!([{"field": "reason", "operator": "in", "value": "x"}])),
            "conditions[0].value",
        ),
    ];
    let catalog = catalog();
    for (name, definition, path) in cases {
        let problems = validate_definition(&definition, &catalog).expect_err(name);
        assert!(
            problems.iter().any(|p| p.path == path),
            "{name}: expected a problem at {path}, got {problems:?}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let definition = with(|d| {
        d["name"] = json!("");
        d["steps"][1]["channel"] = json!("fax");
        d["client_scope"] = json!(5);
    });
    let problems = validate_definition(&definition, &catalog()).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for path in ["name", "steps[1].channel", "client_scope"] {
        assert!(paths.contains(&path), "{paths:?}");
    }
}

#[test]
fn a_schedule_trigger_with_a_time_zone_is_valid() {
    let definition = with(|d| {
        d["trigger"] = json!({"type": "schedule", "cron": "0 8 * * 1-5", "timezone": "Europe/Paris"})
    });
    validate_definition(&definition, &catalog()).unwrap();
}

#[test]
fn every_shipped_system_agent_and_template_is_valid() {
    let catalog = catalog();
    let agents = oa_agents::shipped_system_agents();
    assert_eq!(agents.len(), 6);
    let mut step_types = std::collections::HashSet::new();
    for agent in &agents {
        let definition = serde_json::to_value(&agent.definition).unwrap();
        validate_definition(&definition, &catalog).unwrap_or_else(|p| panic!("{}: {p:?}", agent.id));
        for step in &agent.definition.steps {
            step_types.insert(step.kind.type_name());
        }
    }
    assert_eq!(step_types.len(), 5, "the system agents use every step type: {step_types:?}");
    let templates = oa_agents::shipped_templates();
    assert!(templates.len() >= 10);
    for template in templates {
        let definition = serde_json::to_value(&template.definition).unwrap();
        validate_definition(&definition, &catalog).unwrap_or_else(|p| panic!("{}: {p:?}", template.id));
    }
}
