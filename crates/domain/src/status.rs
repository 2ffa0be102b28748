//! The statuses and kinds the plane stores as text, as enums. Their string forms come from the
//! derives (`snake_case`), for serde, `Display`/`FromStr` and the stored column alike; the lists an
//! error message names come from `VARIANTS`.

use serde::{Deserialize, Serialize};
use strum::{Display, EnumString, IntoStaticStr, VariantNames};

/// Lets a store read the enum from a text column (`#[sqlx(try_from = "String")]`) and names it by
/// its string form.
macro_rules! text_enum {
    ($($name:ty),* $(,)?) => {$(
        impl TryFrom<String> for $name {
            type Error = strum::ParseError;
            fn try_from(text: String) -> Result<Self, strum::ParseError> {
                text.parse()
            }
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    )*};
}

text_enum!(crate::agent::StepType);

/// Declares text enums with the derives every one of them shares.
macro_rules! text_enums {
    ($($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? })*) => {$(
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            Serialize, Deserialize, Display, EnumString, IntoStaticStr, VariantNames,
        )]
        #[serde(rename_all = "snake_case")]
        #[strum(serialize_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),* }
        text_enum!($name);
    )*};
}

text_enums! {
    /// Where an execution is: it can make progress while `pending`, `running` or
    /// `waiting_approval`; the other three are final.
    pub enum ExecutionStatus { Pending, Running, WaitingApproval, Completed, Failed, Cancelled }

    /// A step record's status. A step waiting on its gate stays `running`.
    pub enum StepStatus { Pending, Running, Completed, Failed, Skipped, Cancelled }

    /// An approval gate: `pending` until a human decides it or it expires.
    pub enum GateStatus { Pending, Approved, Denied, Expired }

    pub enum AgentStatus { Draft, Active, Paused, Error }

    pub enum AgentType { System, Template, Custom, Cloned }

    /// A metered model tier; each has a price in credits per call.
    pub enum ModelTier { Quick, Standard, Premium, Expert }

    /// Where a notification goes.
    pub enum Channel { Sms, Email, Slack, Teams, Webhook }

    pub enum TemplateCategory { Operations, Security, Billing, Hr, Custom }

    /// A credit reservation: held, then committed (charged) or released.
    pub enum ReservationStatus { Reserved, Committed, Released }

    /// What kind of principal a caller is (see `Principal`).
    pub enum PrincipalKind { User, IntegrationKey, Service, Product }

    /// What happened to a gate, as its audit trail records it.
    pub enum GateAction { Opened, Approved, Denied, Expired, Escalated }

    /// Who acted on a gate, by kind: a person, a key, a signed link, or the plane itself.
    pub enum GateActor { User, IntegrationKey, SignedLink, System }

    /// How a gate was decided.
    pub enum DecidedVia { User, IntegrationKey, SignedLink, Timeout, Cancel }

    /// An org's subscription tier: its monthly credits, rate limits and defaults follow from it.
    pub enum OrgTier { Starter, Pro, Enterprise }

    /// The catalog's categories of event types.
    pub enum EventCategory {
        ServiceDesk, Security, Operations, Finance, Compliance, Communications, Onboarding, ClientSuccess,
    }
}

impl ExecutionStatus {
    /// Whether the execution can still make progress.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::WaitingApproval)
    }

    /// Whether a runner may go on with it (a decision can land while a step is running).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::WaitingApproval)
    }
}

impl StepStatus {
    /// Whether the step has ended, one way or another.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms_are_snake_case_everywhere() {
        assert_eq!(ExecutionStatus::WaitingApproval.as_str(), "waiting_approval");
        assert_eq!(ExecutionStatus::WaitingApproval.to_string(), "waiting_approval");
        assert_eq!(serde_json::to_value(ExecutionStatus::WaitingApproval).unwrap(), "waiting_approval");
        assert_eq!("waiting_approval".parse::<ExecutionStatus>().unwrap(), ExecutionStatus::WaitingApproval);
        assert_eq!(ExecutionStatus::try_from("failed".to_owned()).unwrap(), ExecutionStatus::Failed);
        assert!(ExecutionStatus::try_from("Failed".to_owned()).is_err());
        assert_eq!(ModelTier::VARIANTS, ["quick", "standard", "premium", "expert"]);
        assert_eq!(Channel::VARIANTS.join(", "), "sms, email, slack, teams, webhook");
        assert_eq!(TemplateCategory::Hr.as_str(), "hr");
        assert_eq!(OrgTier::VARIANTS, ["starter", "pro", "enterprise"]);
        assert_eq!(
            EventCategory::VARIANTS,
            [
                "service_desk",
                "security",
                "operations",
                "finance",
                "compliance",
                "communications",
                "onboarding",
                "client_success",
            ]
        );
    }

    #[test]
    fn live_and_active_statuses() {
        let live: Vec<_> = ExecutionStatus::VARIANTS
            .iter()
            .map(|s| s.parse::<ExecutionStatus>().unwrap())
            .filter(|s| s.is_live())
            .collect();
        assert_eq!(
            live,
            [ExecutionStatus::Pending, ExecutionStatus::Running, ExecutionStatus::WaitingApproval]
        );
        assert!(!ExecutionStatus::Pending.is_active());
        assert!(ExecutionStatus::WaitingApproval.is_active());
        assert!(!ExecutionStatus::Cancelled.is_live());
        assert!(StepStatus::Skipped.is_finished() && !StepStatus::Running.is_finished());
    }
}
