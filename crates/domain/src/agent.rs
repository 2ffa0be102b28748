//! The agent definition: trigger, conditions, steps, conflict behavior and client scope, as stored
//! and as the worker reads it. Validation against the catalog lives in the agents service.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use strum::{EnumDiscriminants, IntoStaticStr, VariantNames};

pub use crate::status::{AgentStatus, AgentType, Channel, ModelTier, TemplateCategory};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    BusEvent {
        source_product: String,
        event_type: String,
        #[serde(default)]
        filters: Vec<Filter>,
    },
    Schedule {
        cron: String,
        #[serde(default = "utc")]
        timezone: String,
    },
}

fn utc() -> String {
    "UTC".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Operator {
    Eq,
    Neq,
    In,
    NotIn,
    Contains,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
}

/// `{field, operator, value}`: `field` is a dotted path into the event payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    pub field: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientScope {
    All,
    Clients(Vec<String>),
}

impl Serialize for ClientScope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ClientScope::All => serializer.serialize_str("all"),
            ClientScope::Clients(ids) => ids.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ClientScope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) if s == "all" => Ok(ClientScope::All),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s),
                    _ => Err(serde::de::Error::custom("client ids are non-empty strings")),
                })
                .collect::<Result<_, _>>()
                .map(ClientScope::Clients),
            _ => Err(serde::de::Error::custom("client_scope is \"all\" or a list of client ids")),
        }
    }
}

impl ClientScope {
    pub fn admits(&self, client_id: Option<&str>) -> bool {
        match self {
            ClientScope::All => true,
            ClientScope::Clients(ids) => client_id.is_some_and(|c| ids.iter().any(|id| id == c)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ConflictBehavior {
    #[default]
    Additive,
    Override,
    Exclusive,
}

/// A step: its id, its optional `when`, and the fields of its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(flatten)]
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum OnTimeout {
    Deny,
    Approve,
    Escalate,
}

/// A step's type and its fields. [`StepType`], the type alone, is derived from it: its string
/// forms are the `type` tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, EnumDiscriminants)]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum_discriminants(
    name(StepType),
    derive(Hash, IntoStaticStr, VariantNames, strum::EnumString, strum::Display, Serialize, Deserialize),
    strum(serialize_all = "snake_case"),
    serde(rename_all = "snake_case")
)]
pub enum StepKind {
    AiReason {
        model_tier: ModelTier,
        prompt: String,
        output_schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
    },
    Notification {
        channel: Channel,
        recipients: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        body: String,
    },
    Approval {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approvers: Option<Vec<String>>,
        expires_in: String,
        #[serde(default = "deny")]
        on_timeout: OnTimeout,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        escalate_to: Option<String>,
        /// Where a denied (or expired-and-denied) gate goes: a later step's id. Without it, a
        /// denial ends the execution as failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_deny: Option<String>,
        /// Who is told the gate is open, each with a signed link to decide it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notify: Option<ApprovalNotify>,
    },
    Transform {
        output: Map<String, Value>,
    },
    Action {
        action: String,
        #[serde(default)]
        params: Map<String, Value>,
    },
}

/// The announcement of an open gate: a channel and its recipients (templates allowed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalNotify {
    pub channel: Channel,
    pub recipients: Vec<String>,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

fn deny() -> OnTimeout {
    OnTimeout::Deny
}

impl StepKind {
    pub fn step_type(&self) -> StepType {
        self.into()
    }

    pub fn type_name(&self) -> &'static str {
        self.step_type().into()
    }
}

/// What an org writes: everything of an agent but its identity, status and stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDefinition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: String,
    pub trigger: Trigger,
    #[serde(default)]
    pub conditions: Vec<Filter>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub conflict_behavior: ConflictBehavior,
    pub client_scope: ClientScope,
    /// Its executions' priority within the org's share of the workers.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// At most `limit` executions per key run at once; the others wait in event order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// A burst of events for one key yields one execution, with the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
    /// At most `limit` executions per key start within any `period`; the excess waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
}

/// An agent's priority within its org: `high` work is taken before `normal`, `normal` before `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, VariantNames, IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }

    /// The rank stored with runnable work: 0 is taken first.
    pub fn rank(self) -> i16 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// `{key, limit}`: `key` is a template over the event (`{{event_payload.ticket_id}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    pub key: String,
    pub limit: u32,
}

/// `{key, period}`: the execution waits `period` after its event; a later event for the same key
/// within it replaces it (the earlier is recorded as superseded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debounce {
    pub key: String,
    pub period: String,
}

/// `{key, limit, period}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throttle {
    pub key: String,
    pub limit: u32,
    pub period: String,
}

/// Parses a duration such as `500ms`, `2s`, `30m`, `2h`, `1d` or a number of seconds, in
/// milliseconds.
pub fn parse_duration_millis(text: &str) -> Option<u64> {
    match text.trim().strip_suffix("ms") {
        Some(millis) => millis.parse().ok(),
        None => parse_duration_seconds(text)?.checked_mul(1_000),
    }
}

/// Parses a duration such as `30m`, `2h`, `1d`, `45s` or a number of seconds.
pub fn parse_duration_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(seconds);
    }
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let number: u64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_reference_example_parses() {
        // The reference's example, shared with the API and validation tests.
        let definition: AgentDefinition =
            serde_json::from_str(include_str!("../fixtures/p1_escalation.json")).unwrap();
        assert_eq!(definition.steps[0].kind.type_name(), "notification");
        assert_eq!(definition.client_scope, ClientScope::All);
        let back = serde_json::to_value(&definition).unwrap();
        assert_eq!(back["steps"][0]["type"], "notification");
        assert_eq!(back["client_scope"], "all");
    }

    #[test]
    fn client_scope_admits_only_its_clients() {
        let scope: ClientScope = serde_json::from_value(json!(["cl_1", "cl_2"])).unwrap();
        assert!(scope.admits(Some("cl_1")));
        assert!(!scope.admits(Some("cl_3")));
        assert!(!scope.admits(None));
        assert!(serde_json::from_value::<ClientScope>(json!("some")).is_err());
    }

    #[test]
    fn string_lists_come_from_the_enums() {
        assert_eq!(StepType::VARIANTS, ["ai_reason", "notification", "approval", "transform", "action"]);
        assert_eq!(Operator::VARIANTS.len(), 10);
        assert_eq!(Operator::VARIANTS[3], "not_in");
        assert_eq!(ConflictBehavior::VARIANTS, ["additive", "override", "exclusive"]);
        assert_eq!(OnTimeout::Escalate.as_str(), "escalate");
        assert_eq!("ai_reason".parse::<StepType>().unwrap(), StepType::AiReason);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_seconds("2h"), Some(7200));
        assert_eq!(parse_duration_seconds("30m"), Some(1800));
        assert_eq!(parse_duration_seconds("90"), Some(90));
        assert_eq!(parse_duration_seconds("2w"), None);
        assert_eq!(parse_duration_seconds(""), None);
        assert_eq!(parse_duration_millis("250ms"), Some(250));
        assert_eq!(parse_duration_millis("2s"), Some(2_000));
        assert_eq!(parse_duration_millis("x ms"), None);
    }
}
