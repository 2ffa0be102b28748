//! Prefixed, sortable ids: `agent_<ulid>`, `exec_<ulid>`, `appr_<ulid>`, `evt_<ulid>`, `org_<...>`.

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
    fn malformed_ids_are_recognised() {
        assert!(!has_prefix("exec_", "exec"));
        assert!(!has_prefix("agent_x", "exec"));
        assert!(!has_prefix("exec_a'b", "exec"));
        assert!(is_valid_org_id("org_demo"));
        assert!(!is_valid_org_id("demo"));
    }
}
