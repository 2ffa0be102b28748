//! Prefixed, sortable ids: `agent_<ulid>`, `exec_<ulid>`, `appr_<ulid>`, `evt_<ulid>`, `org_<...>`.

/// Declares an id newtype: a `String` that only its own kind of id fits, so a call that swaps an
/// org's id and an agent's does not compile. Its string form is the id itself (serde
/// `transparent`); stores bind `as_str()` and read it with `#[sqlx(try_from = "String")]`.
macro_rules! id_types {
    ($($(#[$meta:meta])* $name:ident $(= $prefix:literal)?;)*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }

            $(
            /// A new id of this kind, sortable by creation time.
            pub fn generate() -> $name {
                $name(new_id($prefix))
            }

            /// Whether `text` has this kind's shape (`<prefix>_<ulid or name>`); a malformed id
            /// is answered like a missing one, without a lookup.
            pub fn is_well_formed(text: &str) -> bool {
                has_prefix(text, $prefix)
            }
            )?
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

id_types! {
    /// An org: `org_<name>`, or `system` for what the plane ships.
    OrgId;
    AgentId = "agent";
    ExecutionId = "exec";
    /// An approval gate.
    GateId = "appr";
    EventId = "evt";
}

/// A new id with the given prefix and a ULID, so ids sort by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// Whether `id` has the shape `<prefix>_<rest>` with a non-empty rest of id-safe characters.
/// Used to answer malformed ids with the same 404 as missing ones, without a lookup.
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('_')).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 120
            && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// An org id as accepted from the CLI and tokens: `org_` then letters, digits, `_` or `-`.
pub fn is_valid_org_id(id: &str) -> bool {
    has_prefix(id, "org") || id == "system"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_carry_their_prefix_and_sort_by_time() {
        let first = new_id("exec");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = new_id("exec");
        assert!(has_prefix(&first, "exec"));
        assert!(first < second);
    }

    #[test]
    fn id_types_keep_their_string_form() {
        let agent = AgentId::generate();
        assert!(AgentId::is_well_formed(agent.as_str()));
        assert_eq!(serde_json::to_value(&agent).unwrap(), agent.as_str());
        let org = OrgId::from("org_demo");
        assert_eq!(org.to_string(), "org_demo");
        assert!(org == *"org_demo");
        assert!(!ExecutionId::is_well_formed("agent_01"));
    }

    #[test]
    fn malformed_ids_are_recognised() {
        assert!(!has_prefix("exec_", "exec"));
        assert!(!has_prefix("agent_x", "exec"));
        assert!(!has_prefix("exec_a'b", "exec"));
        assert!(is_valid_org_id("org_demo"));
        assert!(!is_valid_org_id("demo"));
    }
}
