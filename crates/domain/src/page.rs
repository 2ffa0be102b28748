//! Cursor pagination shared by the list routes (executions, approvals): a page size from 1 to 200
//! (50 when unset), newest first by id, and the last id of a full page as the next cursor. Ids are
//! ULIDs, so the cursor stays correct while new rows arrive.

use crate::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// The page size a request asks for (`0` means unset).
pub fn limit(requested: u32) -> Result<u32, ApiError> {
    match requested {
        0 => Ok(DEFAULT_LIMIT),
        1..=MAX_LIMIT => Ok(requested),
        _ => Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}"))),
    }
}

/// Cuts `rows` (read with `limit + 1`) down to the page and returns the next cursor: the last id
/// of the page when more rows follow, else empty.
pub fn cut<T>(rows: &mut Vec<T>, limit: u32, id_of: impl Fn(&T) -> &str) -> String {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    match rows.last() {
        Some(last) if more => id_of(last).to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_bound() {
        assert_eq!(limit(0).unwrap(), 50);
        assert_eq!(limit(200).unwrap(), 200);
        assert!(limit(201).is_err());
    }

    #[test]
    fn a_full_page_names_its_last_id() {
        let mut rows = vec!["c", "b", "a"];
        assert_eq!(cut(&mut rows, 2, |r| r), "b");
        assert_eq!(rows, vec!["c", "b"]);
        let mut rows = vec!["c", "b"];
        assert_eq!(cut(&mut rows, 2, |r| r), "");
    }
}
