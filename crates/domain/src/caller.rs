//! Who is calling: the org, the principal (a Hub user or an integration key), and what it may do.
//!
//! The gateway resolves this once per request; services receive it in gRPC metadata and check
//! permissions with [`Caller::require`].

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Technician,
    Viewer,
}

impl Role {
    pub fn parse(role: &str) -> Option<Role> {
        match role {
            "admin" => Some(Role::Admin),
            "technician" => Some(Role::Technician),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Technician => "technician",
            Role::Viewer => "viewer",
        }
    }
}

/// Integration key scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "agents:read")]
    AgentsRead,
    #[serde(rename = "agents:write")]
    AgentsWrite,
    #[serde(rename = "executions:read")]
    ExecutionsRead,
    #[serde(rename = "executions:write")]
    ExecutionsWrite,
    #[serde(rename = "approvals:read")]
    ApprovalsRead,
    #[serde(rename = "approvals:decide")]
    ApprovalsDecide,
    #[serde(rename = "credits:read")]
    CreditsRead,
    #[serde(rename = "catalog:write")]
    CatalogWrite,
    #[serde(rename = "events:publish")]
    EventsPublish,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::ExecutionsRead,
        Scope::ExecutionsWrite,
        Scope::ApprovalsRead,
        Scope::ApprovalsDecide,
        Scope::CreditsRead,
        Scope::CatalogWrite,
        Scope::EventsPublish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsRead => "agents:read",
            Scope::AgentsWrite => "agents:write",
            Scope::ExecutionsRead => "executions:read",
            Scope::ExecutionsWrite => "executions:write",
            Scope::ApprovalsRead => "approvals:read",
            Scope::ApprovalsDecide => "approvals:decide",
            Scope::CreditsRead => "credits:read",
            Scope::CatalogWrite => "catalog:write",
            Scope::EventsPublish => "events:publish",
        }
    }

    pub fn parse(scope: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == scope)
    }
}

/// What an operation needs. Each maps to the roles and the key scope that grant it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadAgents,
    WriteAgents,
    ReadExecutions,
    ControlExecutions,
    ReadApprovals,
    DecideApprovals,
    ReadCredits,
    ReadCatalog,
    WriteCatalog,
    PublishEvents,
}

impl Permission {
    fn allows_role(self, role: Role) -> bool {
        use Permission as P;
        match role {
            Role::Admin => !matches!(self, P::WriteCatalog | P::PublishEvents),
            Role::Technician => matches!(
                self,
                P::ReadAgents
                    | P::ReadExecutions
                    | P::ControlExecutions
                    | P::ReadApprovals
                    | P::DecideApprovals
                    | P::ReadCredits
                    | P::ReadCatalog
            ),
            Role::Viewer => matches!(
                self,
                P::ReadAgents | P::ReadExecutions | P::ReadApprovals | P::ReadCredits | P::ReadCatalog
            ),
        }
    }

    fn allowing_scopes(self) -> &'static [Scope] {
        use Permission as P;
        match self {
            P::ReadAgents => &[Scope::AgentsRead, Scope::AgentsWrite],
            P::WriteAgents => &[Scope::AgentsWrite],
            P::ReadExecutions => &[Scope::ExecutionsRead, Scope::ExecutionsWrite],
            P::ControlExecutions => &[Scope::ExecutionsWrite],
            P::ReadApprovals => &[Scope::ApprovalsRead, Scope::ApprovalsDecide],
            P::DecideApprovals => &[Scope::ApprovalsDecide],
            P::ReadCredits => &[Scope::CreditsRead],
            // Any key of the org may read the catalog; products need it to publish correctly.
            P::ReadCatalog => &Scope::ALL,
            P::WriteCatalog => &[Scope::CatalogWrite],
            P::PublishEvents => &[Scope::EventsPublish],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Principal {
    /// A Hub user signed in through SSO.
    User { sub: String, role: Role },
    /// A server holding an integration key.
    IntegrationKey { key_id: String, scopes: Vec<Scope> },
    /// A component of the plane acting for an org (the worker matching and running agents).
    Service { name: String },
    /// A product (PSA, RMM, ...) holding its own key: it writes its event types in the shared
    /// catalog and nothing else. Its caller's org is `system`.
    Product { key_id: String, product: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub org_id: String,
    /// The org's subscription tier (starter, pro, enterprise), resolved with the org; services
    /// read limits such as the active-agent cap from it.
    #[serde(default)]
    pub tier: String,
    pub principal: Principal,
}

impl Caller {
    /// The plane itself acting for `org_id`.
    pub fn service(name: &str, org_id: &str) -> Caller {
        Caller {
            org_id: org_id.to_owned(),
            tier: String::new(),
            principal: Principal::Service { name: name.to_owned() },
        }
    }

    pub fn may(&self, permission: Permission) -> bool {
        match &self.principal {
            Principal::User { role, .. } => permission.allows_role(*role),
            Principal::IntegrationKey { scopes, .. } => {
                permission.allowing_scopes().iter().any(|s| scopes.contains(s))
            }
            Principal::Product { .. } => {
                matches!(permission, Permission::ReadCatalog | Permission::WriteCatalog)
            }
            // Only the gateway mints user and key callers; a service caller comes from inside the
            // plane, which already holds the service credential.
            Principal::Service { .. } => true,
        }
    }

    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.may(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden("Insufficient permissions for this operation"))
        }
    }

    /// A short label for audit records and logs: `user:<sub>` or `key:<id>`.
    /// The caller's org, as the id type stores take.
    pub fn org(&self) -> crate::ids::OrgId {
        crate::ids::OrgId::from(self.org_id.as_str())
    }

    pub fn principal_kind(&self) -> crate::status::PrincipalKind {
        use crate::status::PrincipalKind;
        match self.principal {
            Principal::User { .. } => PrincipalKind::User,
            Principal::IntegrationKey { .. } => PrincipalKind::IntegrationKey,
            Principal::Service { .. } => PrincipalKind::Service,
            Principal::Product { .. } => PrincipalKind::Product,
        }
    }

    pub fn principal_label(&self) -> String {
        match &self.principal {
            Principal::User { sub, .. } => format!("user:{sub}"),
            Principal::IntegrationKey { key_id, .. } => format!("key:{key_id}"),
            Principal::Service { name } => format!("service:{name}"),
            Principal::Product { key_id, product } => format!("product:{product}:{key_id}"),
        }
    }

    pub fn is_viewer(&self) -> bool {
        matches!(self.principal, Principal::User { role: Role::Viewer, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Caller {
        Caller {
            org_id: "org_a".into(),
            tier: "pro".into(),
            principal: Principal::User { sub: "u".into(), role },
        }
    }

    #[test]
    fn viewers_read_but_never_write() {
        let viewer = user(Role::Viewer);
        assert!(viewer.may(Permission::ReadAgents));
        assert!(!viewer.may(Permission::WriteAgents));
        assert!(!viewer.may(Permission::DecideApprovals));
        assert!(!viewer.may(Permission::ControlExecutions));
    }

    #[test]
    fn technicians_decide_and_control_but_do_not_edit_agents() {
        let tech = user(Role::Technician);
        assert!(tech.may(Permission::DecideApprovals));
        assert!(tech.may(Permission::ControlExecutions));
        assert!(!tech.may(Permission::WriteAgents));
    }

    #[test]
    fn keys_get_exactly_their_scopes() {
        let key = Caller {
            org_id: "org_a".into(),
            tier: "pro".into(),
            principal: Principal::IntegrationKey { key_id: "key_1".into(), scopes: vec![Scope::AgentsRead] },
        };
        assert!(key.may(Permission::ReadAgents));
        assert!(!key.may(Permission::WriteAgents));
        assert!(!key.may(Permission::PublishEvents));
    }

    #[test]
    fn scopes_serialize_as_their_names() {
        for scope in Scope::ALL {
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
        }
    }
}
