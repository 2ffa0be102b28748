//! Validation of agent definitions against the event catalog. Every problem is collected with the
//! path it concerns, so a client fixes them all at once; nothing is stored unless all pass.

use std::collections::{HashMap, HashSet};

use oa_domain::agent::{
    AgentDefinition, Channel, ConflictBehavior, ModelTier, Operator, Priority, StepType,
    parse_duration_millis, parse_duration_seconds,
};
use oa_domain::catalog::{EventCategory, EventType, FieldType, FilterableField};
use serde_json::{Map, Value, json};
use strum::VariantNames;

const TOP_LEVEL_FIELDS: [&str; 12] = [
    "name",
    "description",
    "category",
    "trigger",
    "conditions",
    "steps",
    "conflict_behavior",
    "client_scope",
    "priority",
    "concurrency",
    "debounce",
    "throttle",
];
/// The most executions one concurrency key or throttle admits at once.
const MAX_FLOW_LIMIT: u64 = 10_000;
/// The longest debounce or throttle period.
const MAX_FLOW_PERIOD_MS: u64 = 86_400_000;
const MAX_STEPS: usize = 100;
const MAX_APPROVAL_SECONDS: u64 = 30 * 86_400;

/// One failing path and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        json!({ "path": self.path, "message": self.message })
    }
}

/// What the org's subscription tier allows a definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_recipients: usize,
    pub min_schedule_interval_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_recipients: 100, min_schedule_interval_seconds: 1 }
    }
}

impl Limits {
    pub fn of_tier(tier: &oa_config::TierConfig) -> Limits {
        Limits {
            max_recipients: tier.max_recipients as usize,
            min_schedule_interval_seconds: tier.min_schedule_interval_seconds,
        }
    }
}

struct Checker<'a> {
    problems: Vec<Problem>,
    catalog: &'a HashMap<String, EventType>,
    limits: Limits,
}

/// The shortest gap between the next ticks of `cron` (UTC), looking a few dozen ticks ahead.
fn shortest_interval_seconds(cron: &croner::Cron) -> Option<i64> {
    // The gap from now to the first tick is partial: gaps are measured from tick to tick.
    let mut cursor = cron.find_next_occurrence(&chrono::Utc::now(), false).ok()?;
    let mut shortest: Option<i64> = None;
    for _ in 0..48 {
        let next = cron.find_next_occurrence(&cursor, false).ok()?;
        let gap = (next - cursor).num_seconds();
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        cursor = next;
    }
    shortest
}

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }
}

/// The event type id a raw definition's trigger names, if it names one; callers fetch it from the
/// catalog before validating.
pub fn trigger_event_id(definition: &Value) -> Option<String> {
    let trigger = definition.get("trigger")?;
    let product = trigger.get("source_product")?.as_str()?;
    let event = trigger.get("event_type")?.as_str()?;
    Some(EventType::id_of(product, event))
}

/// Validates a full definition; `catalog` holds the event types it may name.
pub fn validate_definition(
    input: &Value,
    catalog: &HashMap<String, EventType>,
) -> Result<AgentDefinition, Vec<Problem>> {
    validate_within(input, catalog, Limits::default())
}

/// Validates a full definition within a tier's limits.
pub fn validate_within(
    input: &Value,
    catalog: &HashMap<String, EventType>,
    limits: Limits,
) -> Result<AgentDefinition, Vec<Problem>> {
    let mut checker = Checker { problems: Vec::new(), catalog, limits };
    let Some(object) = input.as_object() else {
        return Err(vec![Problem {
            path: String::new(),
            message: "the agent definition is a JSON object".into(),
        }]);
    };
    for key in object.keys() {
        if !TOP_LEVEL_FIELDS.contains(&key.as_str()) && key != "status" {
            checker.problem(key.clone(), "unknown field");
        }
    }
    check_name(&mut checker, object);
    if let Some(description) = object.get("description")
        && description.as_str().is_none_or(|d| d.len() > 2000)
    {
        checker.problem("description", "description is a string of at most 2000 characters");
    }
    match object.get("category").and_then(Value::as_str) {
        Some(category) if category.parse::<EventCategory>().is_ok() => {}
        _ => {
            checker.problem("category", format!("category is one of {}", EventCategory::VARIANTS.join(", ")))
        }
    }
    let event_type = check_trigger(&mut checker, object.get("trigger"));
    check_conditions(&mut checker, object.get("conditions"), event_type.as_ref());
    check_steps(&mut checker, object.get("steps"));
    if let Some(behavior) = object.get("conflict_behavior")
        && behavior.as_str().is_none_or(|b| !ConflictBehavior::VARIANTS.contains(&b))
    {
        checker.problem(
            "conflict_behavior",
            format!("conflict_behavior is one of {}", ConflictBehavior::VARIANTS.join(", ")),
        );
    }
    check_client_scope(&mut checker, object.get("client_scope"));
    check_flow_control(&mut checker, object);

    if !checker.problems.is_empty() {
        return Err(checker.problems);
    }
    let mut normalized = object.clone();
    normalized.remove("status");
    normalized.entry("client_scope").or_insert_with(|| json!("all"));
    serde_json::from_value(Value::Object(normalized))
        .map_err(|e| vec![Problem { path: String::new(), message: e.to_string() }])
}

/// `priority`, `concurrency {key, limit}`, `debounce {key, period}` and `throttle {key, limit,
/// period}`. Keys are templates over the event alone: steps have not run when work is dispatched.
fn check_flow_control(checker: &mut Checker, object: &Map<String, Value>) {
    if let Some(priority) = object.get("priority")
        && priority.as_str().is_none_or(|p| !Priority::VARIANTS.contains(&p))
    {
        checker.problem("priority", format!("priority is one of {}", Priority::VARIANTS.join(", ")));
    }
    let rules: [(&str, &[&str]); 3] = [
        ("concurrency", &["key", "limit"]),
        ("debounce", &["key", "period"]),
        ("throttle", &["key", "limit", "period"]),
    ];
    for (name, fields) in rules {
        let Some(rule) = object.get(name) else { continue };
        let Some(rule) = rule.as_object() else {
            checker.problem(name, format!("{name} is an object with {}", fields.join(", ")));
            continue;
        };
        for key in rule.keys().filter(|k| !fields.contains(&k.as_str())) {
            checker.problem(format!("{name}.{key}"), "unknown field");
        }
        let path = format!("{name}.key");
        match rule.get("key").and_then(Value::as_str) {
            Some(key) if !key.trim().is_empty() && key.len() <= 500 => {
                match oa_template::template_references(key) {
                    Ok(references) => {
                        let root = |r: &String| r.split('.').next().unwrap_or_default().to_owned();
                        if let Some(other) = references
                            .iter()
                            .find(|r| !["event", "event_payload"].contains(&root(r).as_str()))
                        {
                            checker.problem(
                                path,
                                format!("{other} is not available; a key reads event_payload and event"),
                            );
                        }
                    }
                    Err(error) => checker.problem(path, format!("the template does not parse: {error}")),
                }
            }
            _ => checker.problem(
                path,
                "key is a template of 1 to 500 characters, such as {{event_payload.ticket_id}}",
            ),
        }
        if fields.contains(&"limit")
            && rule.get("limit").and_then(Value::as_u64).is_none_or(|l| !(1..=MAX_FLOW_LIMIT).contains(&l))
        {
            checker
                .problem(format!("{name}.limit"), format!("limit is an integer from 1 to {MAX_FLOW_LIMIT}"));
        }
        if fields.contains(&"period")
            && rule
                .get("period")
                .and_then(Value::as_str)
                .and_then(parse_duration_millis)
                .is_none_or(|ms| !(1..=MAX_FLOW_PERIOD_MS).contains(&ms))
        {
            checker.problem(
                format!("{name}.period"),
                "period is a duration such as 500ms, 10s, 5m or 1h, of at most 1d",
            );
        }
    }
    if object.contains_key("debounce")
        && object.get("trigger").and_then(|t| t.get("type")).and_then(Value::as_str) == Some("schedule")
    {
        checker.problem("debounce", "a schedule trigger has no burst of events to debounce");
    }
}

fn check_name(checker: &mut Checker, object: &Map<String, Value>) {
    match object.get("name").and_then(Value::as_str) {
        Some(name) if !name.trim().is_empty() && name.len() <= 200 => {}
        _ => checker.problem("name", "name is a string of 1 to 200 characters"),
    }
}

fn check_trigger(checker: &mut Checker, trigger: Option<&Value>) -> Option<EventType> {
    let Some(trigger) = trigger.and_then(Value::as_object) else {
        checker.problem("trigger", "trigger is an object with a type of bus_event or schedule");
        return None;
    };
    match trigger.get("type").and_then(Value::as_str) {
        Some("bus_event") => {
            for key in trigger.keys() {
                if !["type", "source_product", "event_type", "filters"].contains(&key.as_str()) {
                    checker.problem(format!("trigger.{key}"), "unknown field");
                }
            }
            let product = trigger.get("source_product").and_then(Value::as_str);
            let event = trigger.get("event_type").and_then(Value::as_str);
            let (Some(product), Some(event)) = (product, event) else {
                checker.problem("trigger", "a bus_event trigger names its source_product and event_type");
                return None;
            };
            let id = EventType::id_of(product, event);
            let Some(event_type) = checker.catalog.get(&id).cloned() else {
                checker.problem("trigger.event_type", format!("{id} is not in the event catalog"));
                return None;
            };
            match trigger.get("filters") {
                None | Some(Value::Null) => {}
                Some(Value::Array(filters)) => {
                    for (index, filter) in filters.iter().enumerate() {
                        check_filter(
                            checker,
                            &format!("trigger.filters[{index}]"),
                            filter,
                            Some(&event_type),
                            true,
                        );
                    }
                }
                Some(_) => checker.problem("trigger.filters", "filters is a list"),
            }
            Some(event_type)
        }
        Some("schedule") => {
            match trigger.get("cron").and_then(Value::as_str) {
                Some(cron) if cron.parse::<croner::Cron>().is_ok() => {
                    let shortest =
                        cron.parse::<croner::Cron>().ok().and_then(|c| shortest_interval_seconds(&c));
                    let minimum = checker.limits.min_schedule_interval_seconds;
                    if shortest.is_some_and(|s| s < minimum as i64) {
                        checker.problem(
                            "trigger.cron",
                            format!("{cron:?} runs more often than the tier allows (at most once every {minimum} seconds)"),
                        );
                    }
                }
                Some(cron) => {
                    checker.problem("trigger.cron", format!("{cron:?} is not a valid cron expression"))
                }
                None => checker.problem("trigger.cron", "a schedule trigger has a cron expression"),
            }
            if let Some(zone) = trigger.get("timezone")
                && zone.as_str().is_none_or(|z| z.parse::<chrono_tz::Tz>().is_err())
            {
                checker.problem("trigger.timezone", "timezone is an IANA time zone such as Europe/Paris");
            }
            None
        }
        _ => {
            checker.problem("trigger.type", "trigger type is bus_event or schedule");
            None
        }
    }
}

fn operators_for(field_type: FieldType) -> &'static [&'static str] {
    match field_type {
        FieldType::Enum => &["eq", "neq", "in", "not_in", "exists"],
        FieldType::String => &["eq", "neq", "in", "not_in", "contains", "exists"],
        FieldType::Number => &["eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "exists"],
        FieldType::Boolean => &["eq", "neq", "exists"],
        FieldType::Datetime => &["eq", "neq", "gt", "gte", "lt", "lte", "exists"],
    }
}

fn scalar_fits(field: &FilterableField, value: &Value) -> Result<(), String> {
    match field.field_type {
        FieldType::Enum => match value.as_str() {
            Some(v) if field.enum_values.as_ref().is_some_and(|values| values.iter().any(|e| e == v)) => {
                Ok(())
            }
            _ => Err(format!(
                "value must be one of {}",
                field.enum_values.as_deref().unwrap_or_default().join(", ")
            )),
        },
        FieldType::String if value.is_string() => Ok(()),
        FieldType::String => Err("value must be a string".into()),
        FieldType::Number if value.is_number() => Ok(()),
        FieldType::Number => Err("value must be a number".into()),
        FieldType::Boolean if value.is_boolean() => Ok(()),
        FieldType::Boolean => Err("value must be true or false".into()),
        FieldType::Datetime => match value.as_str().map(chrono::DateTime::parse_from_rfc3339) {
            Some(Ok(_)) => Ok(()),
            _ => Err("value must be an RFC 3339 date-time".into()),
        },
    }
}

/// Checks `{field, operator, value}`. In a trigger the field must be filterable; in conditions any
/// payload path is allowed, and catalog types apply where known.
fn check_filter(
    checker: &mut Checker,
    path: &str,
    filter: &Value,
    event_type: Option<&EventType>,
    strict: bool,
) {
    let Some(filter) = filter.as_object() else {
        checker.problem(path, "a filter is an object {field, operator, value}");
        return;
    };
    for key in filter.keys() {
        if !["field", "operator", "value"].contains(&key.as_str()) {
            checker.problem(format!("{path}.{key}"), "unknown field");
        }
    }
    let field_path = filter.get("field").and_then(Value::as_str).unwrap_or_default();
    let operator = filter.get("operator").and_then(Value::as_str).unwrap_or_default();
    let value = filter.get("value").unwrap_or(&Value::Null);
    if field_path.is_empty() {
        checker.problem(format!("{path}.field"), "field names a path in the event payload");
        return;
    }
    if !Operator::VARIANTS.contains(&operator) {
        checker.problem(
            format!("{path}.operator"),
            format!("operator is one of {}", Operator::VARIANTS.join(", ")),
        );
        return;
    }
    let field = event_type.and_then(|e| e.field(field_path));
    let Some(field) = field else {
        if strict {
            let id = event_type.map(|e| e.id.as_str()).unwrap_or("this event type");
            checker
                .problem(format!("{path}.field"), format!("{field_path} is not a filterable field of {id}"));
        } else {
            check_untyped_value(checker, path, operator, value);
        }
        return;
    };
    if !operators_for(field.field_type).contains(&operator) {
        checker.problem(
            format!("{path}.operator"),
            format!("{operator} does not apply to {} field {field_path}", field.field_type.as_str()),
        );
        return;
    }
    match operator {
        "exists" => {
            if !(value.is_null() || value.is_boolean()) {
                checker.problem(format!("{path}.value"), "exists takes true, false or no value");
            }
        }
        "in" | "not_in" => match value.as_array() {
            Some(items) if !items.is_empty() => {
                for (index, item) in items.iter().enumerate() {
                    if let Err(message) = scalar_fits(field, item) {
                        checker.problem(format!("{path}.value[{index}]"), message);
                    }
                }
            }
            _ => checker.problem(format!("{path}.value"), format!("{operator} takes a non-empty list")),
        },
        _ => {
            if let Err(message) = scalar_fits(field, value) {
                checker.problem(format!("{path}.value"), message);
            }
        }
    }
}

fn check_untyped_value(checker: &mut Checker, path: &str, operator: &str, value: &Value) {
    let ok = match operator {
        "exists" => value.is_null() || value.is_boolean(),
        "in" | "not_in" => value.as_array().is_some_and(|items| !items.is_empty()),
        "gt" | "gte" | "lt" | "lte" => value.is_number() || value.is_string(),
        _ => !value.is_null() && !value.is_object() && !value.is_array(),
    };
    if !ok {
        checker.problem(format!("{path}.value"), format!("this value does not fit operator {operator}"));
    }
}

fn check_conditions(checker: &mut Checker, conditions: Option<&Value>, event_type: Option<&EventType>) {
    match conditions {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, condition) in items.iter().enumerate() {
                check_filter(checker, &format!("conditions[{index}]"), condition, event_type, false);
            }
        }
        Some(_) => checker.problem("conditions", "conditions is a list of {field, operator, value}"),
    }
}

fn check_client_scope(checker: &mut Checker, scope: Option<&Value>) {
    let ok = match scope {
        None => true,
        Some(Value::String(s)) => s == "all",
        Some(Value::Array(ids)) => {
            !ids.is_empty()
                && ids.len() <= 1000
                && ids.iter().all(|id| id.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 200))
        }
        Some(_) => false,
    };
    if !ok {
        checker.problem("client_scope", "client_scope is \"all\" or a non-empty list of client ids");
    }
}

fn valid_step_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks the references of a template or expression: known roots, and steps that run earlier.
fn check_references(
    checker: &mut Checker,
    path: &str,
    references: std::collections::BTreeSet<String>,
    earlier: &HashSet<String>,
    all_ids: &HashSet<String>,
) {
    for reference in references {
        let mut parts = reference.split('.');
        let root = parts.next().unwrap_or_default();
        if !oa_template::ROOTS.contains(&root) {
            checker.problem(
                path,
                format!("{reference} is not available; templates read event_payload, event, steps and org"),
            );
            continue;
        }
        if root == "org" {
            let known = match (parts.next(), parts.next()) {
                (Some("contacts"), Some(name)) => {
                    oa_domain::settings::CONTACTS.iter().any(|(known, _)| *known == name)
                }
                (Some("webhooks"), Some(channel)) => oa_domain::settings::WEBHOOKS.contains(&channel),
                _ => false,
            };
            if !known {
                checker.problem(
                    path,
                    format!("{reference} is not in an org's settings; use org.contacts.<list> or org.webhooks.<channel>"),
                );
            }
        }
        if root == "steps" {
            match parts.next() {
                Some(step) if earlier.contains(step) => {}
                Some(step) if all_ids.contains(step) => checker
                    .problem(path, format!("step {step} runs later, so its output is not available here")),
                Some(step) => checker.problem(path, format!("{reference} names an unknown step {step}")),
                None => checker.problem(path, "steps is read as steps.<id>.output.<field>"),
            }
        }
    }
}

fn check_template(
    checker: &mut Checker,
    path: &str,
    text: &str,
    earlier: &HashSet<String>,
    all: &HashSet<String>,
) {
    match oa_template::template_references(text) {
        Ok(references) => check_references(checker, path, references, earlier, all),
        Err(error) => checker.problem(path, format!("the template does not parse: {error}")),
    }
}

fn required_text<'v>(
    checker: &mut Checker,
    step: &'v Map<String, Value>,
    path: &str,
    key: &str,
) -> Option<&'v str> {
    match step.get(key).and_then(Value::as_str) {
        Some(text) if !text.trim().is_empty() => Some(text),
        _ => {
            checker.problem(format!("{path}.{key}"), format!("{key} is a non-empty string"));
            None
        }
    }
}

/// An action's params against its operation's schema: no unknown parameter, every required one,
/// and literal values of the declared type. Templates are checked as templates; what they render
/// to is checked again when the step runs.
fn check_params(
    checker: &mut Checker,
    path: &str,
    operation: &oa_domain::actions::Operation,
    params: &Map<String, Value>,
    earlier: &HashSet<String>,
    all: &HashSet<String>,
) {
    let properties = operation.params["properties"].as_object().cloned().unwrap_or_default();
    for required in operation.params["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !params.contains_key(required) {
            checker.problem(
                format!("{path}.params.{required}"),
                format!("{} needs the parameter {required}", operation.action),
            );
        }
    }
    for (key, value) in params {
        let at = format!("{path}.params.{key}");
        let Some(schema) = properties.get(key) else {
            let known: Vec<&str> = properties.keys().map(String::as_str).collect();
            checker.problem(
                at,
                format!("{} has no parameter {key}; it takes {}", operation.action, known.join(", ")),
            );
            continue;
        };
        match value.as_str() {
            Some(text) if text.contains("{{") || text.contains("{%") => {
                check_template(checker, &at, text, earlier, all)
            }
            _ => {
                let fits = jsonschema::validator_for(schema).is_ok_and(|validator| validator.is_valid(value));
                if !fits {
                    checker.problem(at, format!("the value does not fit the parameter's schema {schema}"));
                }
            }
        }
    }
}

/// Whether `step` is an approval gate a human must decide: one that does not approve itself when
/// it expires.
fn is_human_gate(step: &Value) -> bool {
    step.get("type").and_then(Value::as_str) == Some("approval")
        && step.get("on_timeout").and_then(Value::as_str) != Some("approve")
}

/// A destructive action needs an approval gate decided by a human before it.
fn check_destructive_actions(checker: &mut Checker, steps: &[Value]) {
    for (index, step) in steps.iter().enumerate() {
        let Some(operation) =
            step.get("action").and_then(Value::as_str).and_then(oa_domain::actions::operation)
        else {
            continue;
        };
        if step.get("type").and_then(Value::as_str) == Some("action")
            && operation.destructive
            && !steps[..index].iter().any(is_human_gate)
        {
            checker.problem(
                format!("steps[{index}].action"),
                format!(
                    "{} is destructive: an approval step that a human decides (on_timeout deny or escalate) must come before it",
                    operation.action
                ),
            );
        }
    }
}

fn check_steps(checker: &mut Checker, steps: Option<&Value>) {
    let Some(steps) = steps.and_then(Value::as_array) else {
        checker.problem("steps", "steps is a list");
        return;
    };
    if steps.is_empty() || steps.len() > MAX_STEPS {
        checker.problem("steps", format!("an agent has 1 to {MAX_STEPS} steps"));
    }
    let all_ids: HashSet<String> =
        steps.iter().filter_map(|s| s.get("id").and_then(Value::as_str)).map(str::to_owned).collect();
    let mut earlier = HashSet::new();
    for (index, step) in steps.iter().enumerate() {
        let path = format!("steps[{index}]");
        let Some(step) = step.as_object() else {
            checker.problem(path, "a step is an object");
            continue;
        };
        let id = step.get("id").and_then(Value::as_str);
        match id {
            None => checker.problem(format!("{path}.id"), "every step has an id"),
            Some(id) if !valid_step_id(id) => checker.problem(
                format!("{path}.id"),
                "a step id starts with a lowercase letter and has lowercase letters, digits and '_'",
            ),
            Some(id) if earlier.contains(id) => {
                checker.problem(format!("{path}.id"), format!("step id {id} is used twice"))
            }
            Some(_) => {}
        }
        if let Some(when) = step.get("when") {
            match when.as_str() {
                Some(expression) => match oa_template::expression_references(expression) {
                    Ok(references) => {
                        check_references(checker, &format!("{path}.when"), references, &earlier, &all_ids)
                    }
                    Err(error) => checker
                        .problem(format!("{path}.when"), format!("the condition does not parse: {error}")),
                },
                None => checker.problem(format!("{path}.when"), "when is an expression string"),
            }
        }
        match step.get("type").and_then(Value::as_str) {
            Some(step_type) if StepType::VARIANTS.contains(&step_type) => {
                check_step_fields(checker, &path, step_type, step, &earlier, &all_ids)
            }
            Some(other) => checker.problem(
                format!("{path}.type"),
                format!("{other} is not a step type; use one of {}", StepType::VARIANTS.join(", ")),
            ),
            None => checker.problem(format!("{path}.type"), "every step has a type"),
        }
        if let Some(id) = id {
            earlier.insert(id.to_owned());
        }
    }
    check_destructive_actions(checker, steps);
}

/// Approval links go to the org's own contacts only: a recipient is a contact list
/// (`{{ org.contacts.on_call_sms }}`) or a literal number or address, never a template over event
/// data or model output, which an attacker could aim at themselves.
fn check_link_recipients(checker: &mut Checker, path: &str, notify: &Map<String, Value>) {
    for (index, recipient) in
        notify.get("recipients").and_then(Value::as_array).into_iter().flatten().enumerate()
    {
        let Some(text) = recipient.as_str() else { continue };
        let templated = text.contains("{{") || text.contains("{%");
        if templated && oa_domain::settings::contact_reference(text).is_none() {
            checker.problem(
                format!("{path}.recipients[{index}]"),
                "approval links go only to the org's contacts: use {{ org.contacts.on_call_sms }} (or another contact list), not a template",
            );
        }
    }
}

/// A channel of [`Channel::VARIANTS`] and 1 to 100 recipient templates; returns the channel when valid.
fn check_channel_and_recipients<'a>(
    checker: &mut Checker,
    path: &str,
    fields: &'a Map<String, Value>,
    earlier: &HashSet<String>,
    all: &HashSet<String>,
) -> Option<&'a str> {
    let channel = fields.get("channel").and_then(Value::as_str).filter(|c| Channel::VARIANTS.contains(c));
    if channel.is_none() {
        checker.problem(
            format!("{path}.channel"),
            format!("channel is one of {}", Channel::VARIANTS.join(", ")),
        );
    }
    match fields.get("recipients").and_then(Value::as_array) {
        Some(recipients) if recipients.len() > checker.limits.max_recipients => {
            let most = checker.limits.max_recipients;
            checker
                .problem(format!("{path}.recipients"), format!("the tier allows at most {most} recipients"))
        }
        Some(recipients) if !recipients.is_empty() && recipients.len() <= 100 => {
            for (index, recipient) in recipients.iter().enumerate() {
                match recipient.as_str() {
                    Some(text) if !text.trim().is_empty() => {
                        check_template(checker, &format!("{path}.recipients[{index}]"), text, earlier, all)
                    }
                    _ => checker
                        .problem(format!("{path}.recipients[{index}]"), "a recipient is a non-empty string"),
                }
            }
        }
        _ => checker.problem(format!("{path}.recipients"), "recipients is a list of 1 to 100 strings"),
    }
    channel
}

fn check_step_fields(
    checker: &mut Checker,
    path: &str,
    step_type: &str,
    step: &Map<String, Value>,
    earlier: &HashSet<String>,
    all: &HashSet<String>,
) {
    let allowed: &[&str] = match step_type {
        "ai_reason" => &["model_tier", "prompt", "output_schema", "system_prompt"],
        "notification" => &["channel", "recipients", "subject", "body"],
        "approval" => {
            &["message", "approvers", "expires_in", "on_timeout", "escalate_to", "on_deny", "notify"]
        }
        "transform" => &["output"],
        _ => &["action", "params"],
    };
    for key in step.keys() {
        if !["id", "type", "when"].contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            checker.problem(format!("{path}.{key}"), format!("unknown field for a {step_type} step"));
        }
    }
    match step_type {
        "ai_reason" => {
            if !step
                .get("model_tier")
                .and_then(Value::as_str)
                .is_some_and(|t| ModelTier::VARIANTS.contains(&t))
            {
                checker.problem(
                    format!("{path}.model_tier"),
                    format!("model_tier is one of {}", ModelTier::VARIANTS.join(", ")),
                );
            }
            if let Some(prompt) = required_text(checker, step, path, "prompt") {
                check_template(checker, &format!("{path}.prompt"), prompt, earlier, all);
            }
            if let Some(system) = step.get("system_prompt").and_then(Value::as_str) {
                check_template(checker, &format!("{path}.system_prompt"), system, earlier, all);
            }
            match step.get("output_schema") {
                Some(schema @ Value::Object(_)) => {
                    if let Err(error) = jsonschema::validator_for(schema) {
                        checker.problem(
                            format!("{path}.output_schema"),
                            format!("not a valid JSON Schema: {error}"),
                        );
                    }
                }
                _ => {
                    checker.problem(format!("{path}.output_schema"), "output_schema is a JSON Schema object")
                }
            }
        }
        "notification" => {
            let channel = check_channel_and_recipients(checker, path, step, earlier, all);
            if let Some(body) = required_text(checker, step, path, "body") {
                check_template(checker, &format!("{path}.body"), body, earlier, all);
            }
            match step.get("subject") {
                Some(Value::String(subject)) => {
                    check_template(checker, &format!("{path}.subject"), subject, earlier, all)
                }
                None if channel == Some("email") => {
                    checker.problem(format!("{path}.subject"), "an email notification has a subject")
                }
                None => {}
                Some(_) => checker.problem(format!("{path}.subject"), "subject is a string"),
            }
        }
        "approval" => {
            if let Some(message) = required_text(checker, step, path, "message") {
                check_template(checker, &format!("{path}.message"), message, earlier, all);
            }
            if let Some(approvers) = step.get("approvers") {
                let ok = approvers.as_array().is_some_and(|roles| {
                    !roles.is_empty()
                        && roles.iter().all(|r| matches!(r.as_str(), Some("admin" | "technician")))
                });
                if !ok {
                    checker.problem(
                        format!("{path}.approvers"),
                        "approvers is a non-empty list of admin and technician",
                    );
                }
            }
            match step.get("expires_in").and_then(Value::as_str).and_then(parse_duration_seconds) {
                Some(seconds) if (60..=MAX_APPROVAL_SECONDS).contains(&seconds) => {}
                _ => checker.problem(
                    format!("{path}.expires_in"),
                    "expires_in is a duration from 1m to 30d, such as 2h",
                ),
            }
            let on_timeout = step.get("on_timeout").map(|v| v.as_str());
            match on_timeout {
                None | Some(Some("deny" | "approve")) => {}
                Some(Some("escalate")) => {
                    if !matches!(
                        step.get("escalate_to").and_then(Value::as_str),
                        Some("admin" | "technician")
                    ) {
                        checker.problem(
                            format!("{path}.escalate_to"),
                            "escalating needs escalate_to: admin or technician",
                        );
                    }
                }
                _ => checker.problem(format!("{path}.on_timeout"), "on_timeout is deny, approve or escalate"),
            }
            if let Some(target) = step.get("on_deny") {
                let this = step.get("id").and_then(Value::as_str).unwrap_or_default();
                let later =
                    target.as_str().is_some_and(|t| t != this && all.contains(t) && !earlier.contains(t));
                if !later {
                    checker.problem(format!("{path}.on_deny"), "on_deny names a later step of this agent");
                }
            }
            match step.get("notify") {
                None => {}
                Some(Value::Object(notify)) => {
                    let notify_path = format!("{path}.notify");
                    for key in notify.keys().filter(|k| !["channel", "recipients"].contains(&k.as_str())) {
                        checker.problem(format!("{notify_path}.{key}"), "notify has channel and recipients");
                    }
                    check_channel_and_recipients(checker, &notify_path, notify, earlier, all);
                    check_link_recipients(checker, &notify_path, notify);
                }
                Some(_) => checker.problem(format!("{path}.notify"), "notify is {channel, recipients}"),
            }
        }
        "transform" => match step.get("output").and_then(Value::as_object) {
            Some(output) if !output.is_empty() => {
                for (key, value) in output {
                    if let Some(text) = value.as_str() {
                        check_template(checker, &format!("{path}.output.{key}"), text, earlier, all);
                    }
                }
            }
            _ => checker.problem(format!("{path}.output"), "output is a non-empty map of names to templates"),
        },
        _ => {
            let action = step.get("action").and_then(Value::as_str).unwrap_or_default();
            let Some(operation) = oa_domain::actions::operation(action) else {
                let known: Vec<&str> =
                    oa_domain::actions::catalogue().iter().map(|o| o.action.as_str()).collect();
                checker.problem(
                    format!("{path}.action"),
                    format!(
                        "{action:?} is not an operation of the action catalogue; use one of {}",
                        known.join(", ")
                    ),
                );
                return;
            };
            match step.get("params") {
                None => check_params(checker, path, operation, &Map::new(), earlier, all),
                Some(Value::Object(params)) => check_params(checker, path, operation, params, earlier, all),
                Some(_) => checker.problem(format!("{path}.params"), "params is a map"),
            }
        }
    }
}
