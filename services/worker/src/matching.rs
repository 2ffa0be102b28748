//! Which agents an event starts: trigger, filters, client scope, agent-level conditions, then
//! conflict behavior. Pure functions over an org's in-memory agent set; no I/O.

use std::cmp::Ordering;

use oa_bus::Envelope;
use oa_domain::agent::{AgentDefinition, ConflictBehavior, Filter, Operator, Trigger};
use serde_json::Value;

/// An active agent as the matcher needs it, with the version an execution pins.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub version: i32,
    pub cloned_from: Option<String>,
    pub definition: AgentDefinition,
    /// The definition serialized once, as executions pin it.
    pub definition_json: String,
}

/// Why an event cannot be matched: it goes to the dead letters with this reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmatchable(pub String);

/// The value at a dotted path of a JSON document.
pub fn value_at<'v>(document: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(document, |value, part| value.get(part))
}

fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => {
            match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
                (Ok(a), Ok(b)) => Some(a.cmp(&b)),
                _ => Some(a.cmp(b)),
            }
        }
        _ => None,
    }
}

fn equal(left: &Value, right: &Value) -> bool {
    compare(left, right).map_or(left == right, |o| o == Ordering::Equal)
}

/// Whether one filter holds for a payload.
pub fn filter_holds(filter: &Filter, payload: &Value) -> bool {
    let actual = value_at(payload, &filter.field);
    match filter.operator {
        Operator::Exists => actual.is_some_and(|v| !v.is_null()) == filter.value.as_bool().unwrap_or(true),
        _ => {
            let Some(actual) = actual else { return false };
            match filter.operator {
                Operator::Eq => equal(actual, &filter.value),
                Operator::Neq => !equal(actual, &filter.value),
                Operator::In => {
                    filter.value.as_array().is_some_and(|items| items.iter().any(|i| equal(actual, i)))
                }
                Operator::NotIn => {
                    filter.value.as_array().is_some_and(|items| !items.iter().any(|i| equal(actual, i)))
                }
                Operator::Contains => match (actual, &filter.value) {
                    (Value::String(text), Value::String(needle)) => text.contains(needle.as_str()),
                    (Value::Array(items), needle) => items.iter().any(|i| equal(i, needle)),
                    _ => false,
                },
                Operator::Gt => compare(actual, &filter.value) == Some(Ordering::Greater),
                Operator::Gte => {
                    matches!(compare(actual, &filter.value), Some(Ordering::Greater | Ordering::Equal))
                }
                Operator::Lt => compare(actual, &filter.value) == Some(Ordering::Less),
                Operator::Lte => {
                    matches!(compare(actual, &filter.value), Some(Ordering::Less | Ordering::Equal))
                }
                Operator::Exists => unreachable!("handled above"),
            }
        }
    }
}

fn listens_to<'d>(definition: &'d AgentDefinition, envelope: &Envelope) -> Option<&'d [Filter]> {
    match &definition.trigger {
        Trigger::BusEvent { source_product, event_type, filters }
            if *source_product == envelope.source_product && *event_type == envelope.event_type =>
        {
            Some(filters)
        }
        _ => None,
    }
}

/// The agents `envelope` starts, in a stable order; or why it cannot be matched.
pub fn select<'c>(
    candidates: &'c [Candidate],
    envelope: &Envelope,
) -> Result<Vec<&'c Candidate>, Unmatchable> {
    let client_id =
        envelope.client_id.as_deref().or_else(|| envelope.payload.get("client_id").and_then(Value::as_str));
    let mut matched = Vec::new();
    for candidate in candidates {
        let Some(filters) = listens_to(&candidate.definition, envelope) else { continue };
        for filter in filters {
            if filter.operator != Operator::Exists && value_at(&envelope.payload, &filter.field).is_none() {
                return Err(Unmatchable(format!(
                    "the payload has no {} field, which agent {} filters on",
                    filter.field, candidate.id
                )));
            }
        }
        if !filters.iter().all(|f| filter_holds(f, &envelope.payload)) {
            continue;
        }
        if !candidate.definition.client_scope.admits(client_id) {
            continue;
        }
        if !candidate.definition.conditions.iter().all(|c| filter_holds(c, &envelope.payload)) {
            continue;
        }
        matched.push(candidate);
    }
    // `exclusive`: when one matches, no non-exclusive agent runs for this event.
    if matched.iter().any(|c| c.definition.conflict_behavior == ConflictBehavior::Exclusive) {
        matched.retain(|c| c.definition.conflict_behavior == ConflictBehavior::Exclusive);
    }
    // `override`: a matching clone replaces the agent it was cloned from.
    let overridden: Vec<&str> = matched
        .iter()
        .filter(|c| c.definition.conflict_behavior == ConflictBehavior::Override)
        .filter_map(|c| c.cloned_from.as_deref())
        .collect();
    matched.retain(|c| !overridden.contains(&c.id.as_str()));
    matched.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agent(id: &str, behavior: &str, cloned_from: Option<&str>, filters: Value, scope: Value) -> Candidate {
        let definition = serde_json::from_value(json!({
            "name": id, "category": "service_desk",
            "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created", "filters": filters},
            "steps": [{"id": "t", "type": "transform", "output": {"x": "y"}}],
            "conflict_behavior": behavior, "client_scope": scope
        }))
        .unwrap();
        let definition_json = serde_json::to_string(&definition).unwrap();
        Candidate {
            id: id.into(),
            version: 1,
            cloned_from: cloned_from.map(Into::into),
            definition,
            definition_json,
        }
    }

    fn event(payload: Value) -> Envelope {
        Envelope::new("org_a", "psa", "ticket.created", payload)
    }

    #[test]
    fn filters_scope_and_event_type_decide() {
        let p1 = agent(
            "a1",
            "additive",
            None,
            json!([{"field": "priority", "operator": "eq", "value": "p1"}]),
            json!("all"),
        );
        let scoped = agent("a2", "additive", None, json!([]), json!(["cl_1"]));
        let candidates = vec![p1, scoped];
        let ids =
            |e: &Envelope| select(&candidates, e).unwrap().iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&event(json!({"priority": "p1", "client_id": "cl_1"}))), vec!["a1", "a2"]);
        assert_eq!(ids(&event(json!({"priority": "p2", "client_id": "cl_2"}))), Vec::<String>::new());
        let other = Envelope::new("org_a", "psa", "ticket.closed", json!({"priority": "p1"}));
        assert!(select(&candidates, &other).unwrap().is_empty());
    }

    #[test]
    fn a_payload_missing_a_filtered_field_is_unmatchable() {
        let candidates = vec![agent(
            "a1",
            "additive",
            None,
            json!([{"field": "priority", "operator": "eq", "value": "p1"}]),
            json!("all"),
        )];
        assert!(select(&candidates, &event(json!({"client_id": "cl_1"}))).is_err());
    }

    #[test]
    fn exclusive_and_override_resolve_conflicts() {
        let original = agent("agent_system_dispatch", "additive", None, json!([]), json!("all"));
        let clone = agent("agent_clone", "override", Some("agent_system_dispatch"), json!([]), json!("all"));
        let bystander = agent("agent_other", "additive", None, json!([]), json!("all"));
        let candidates = vec![original.clone(), clone, bystander.clone()];
        let ids: Vec<_> =
            select(&candidates, &event(json!({}))).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, vec!["agent_clone", "agent_other"]);

        let exclusive = agent("agent_only", "exclusive", None, json!([]), json!("all"));
        let candidates = vec![original, bystander, exclusive];
        let ids: Vec<_> =
            select(&candidates, &event(json!({}))).unwrap().iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, vec!["agent_only"]);
    }

    #[test]
    fn operators_compare_numbers_lists_strings_and_presence() {
        let payload = json!({"n": 5, "s": "hello world", "tags": ["a", "b"], "when": "2026-03-09T14:00:00Z"});
        let holds = |field: &str, operator: &str, value: Value| {
            let filter: Filter =
                serde_json::from_value(json!({"field": field, "operator": operator, "value": value}))
                    .unwrap();
            filter_holds(&filter, &payload)
        };
        assert!(holds("n", "gte", json!(5)) && holds("n", "lt", json!(6.5)) && !holds("n", "gt", json!(5)));
        assert!(holds("n", "in", json!([1, 5])) && holds("n", "not_in", json!([1, 2])));
        assert!(holds("s", "contains", json!("world")) && holds("tags", "contains", json!("b")));
        assert!(holds("when", "gt", json!("2026-03-09T13:00:00+00:00")));
        assert!(holds("n", "exists", json!(true)) && holds("missing", "exists", json!(false)));
        assert!(!holds("missing", "eq", json!(1)));
    }
}
