//! Checks for input that Postgres or a downstream system cannot hold. A NUL character is valid in
//! JSON and in a percent-encoded URI, but neither `text` nor `jsonb` columns can store it: left
//! alone it turns an accepted event into a message that fails forever.

use serde_json::Value;

/// The first place in `value` where a string (or an object key) holds a NUL character, as a
/// path such as `payload.subject` or `steps[2].id`. `root` names the value itself.
pub fn find_nul(value: &Value, root: &str) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(|| root.to_owned()),
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(index, item)| find_nul(item, &format!("{root}[{index}]")))
        }
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let path = if root.is_empty() { key.clone() } else { format!("{root}.{key}") };
            if key.contains('\0') {
                return Some(path.replace('\0', "\\u0000"));
            }
            find_nul(item, &path)
        }),
        _ => None,
    }
}

/// Whether a percent-encoded URI component decodes to something holding a NUL character.
/// A raw NUL cannot appear in an HTTP request line, so `%00` is the only way to send one.
pub fn encodes_nul(component: &str) -> bool {
    component.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_nul_is_found_and_its_path_named() {
        let value = json!({"payload": {"subject": "a\u{0}b", "n": 1}});
        assert_eq!(find_nul(&value, "").as_deref(), Some("payload.subject"));
        let value = json!({"steps": [{"id": "ok"}, {"id": "x\u{0}"}]});
        assert_eq!(find_nul(&value, "").as_deref(), Some("steps[1].id"));
        assert_eq!(find_nul(&json!({"k\u{0}": 1}), "body").as_deref(), Some("body.k\\u0000"));
        assert_eq!(find_nul(&json!({"clean": ["a", 1, null]}), ""), None);
    }

    #[test]
    fn percent_encoded_nul_is_seen_in_any_case() {
        assert!(encodes_nul("cursor=%00"));
        assert!(encodes_nul("/api/agents/a%00b"));
        assert!(!encodes_nul("/api/agents/agent_100"));
        assert!(!encodes_nul("a=%2500"));
    }
}
