//! The catalogue of product operations an `action` step may call: each operation's path at the
//! product's endpoint, its parameter schema (JSON Schema), and whether it is destructive. A
//! destructive operation changes or cuts off a client's device or user, so it runs only after a
//! human approved it in the same execution.
//!
//! The path comes from here, never from a definition's text: an `action` names an operation and
//! nothing else about the request.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

/// One operation of a product.
#[derive(Debug, Clone, Deserialize)]
pub struct Operation {
    /// `<product>.<operation>`, as steps name it.
    pub action: String,
    /// The path under the product's configured endpoint.
    pub path: String,
    pub destructive: bool,
    pub description: String,
    /// A JSON Schema for the step's `params` (after rendering).
    pub params: Value,
}

impl Operation {
    pub fn product(&self) -> &str {
        self.action.split_once('.').map_or("", |(product, _)| product)
    }
}

/// Every operation, as shipped.
pub fn catalogue() -> &'static [Operation] {
    static CATALOGUE: OnceLock<Vec<Operation>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        serde_json::from_str(include_str!("../catalogue/actions.json"))
            .expect("the shipped action catalogue parses")
    })
}

/// The operation a step names, if the catalogue has it.
pub fn operation(action: &str) -> Option<&'static Operation> {
    catalogue().iter().find(|operation| operation.action == action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_names_safe_paths_and_marks_destructive_operations() {
        assert!(catalogue().len() >= 6);
        for operation in catalogue() {
            assert!(
                operation.path.starts_with('/') && !operation.path.contains(".."),
                "{}",
                operation.action
            );
            assert!(!operation.product().is_empty());
            assert_eq!(operation.params["additionalProperties"], false, "{}", operation.action);
        }
        assert!(operation("rmm.isolate_device").unwrap().destructive);
        assert!(!operation("psa.update_ticket").unwrap().destructive);
        assert!(operation("rmm.../../admin").is_none());
    }
}
