//! Domain types shared by every crate of the plane: the API's error codes and error body, prefixed
//! ids, and the resolved caller (org, principal, role or scopes).
//!
//! This crate owns no I/O: no database, no network. It must not depend on any service crate.

pub mod actions;
pub mod agent;
pub mod caller;
pub mod catalog;
pub mod error;
pub mod hostile;
pub mod ids;
pub mod page;
pub mod settings;
pub mod status;

pub use caller::{Caller, Permission, Principal, Role, Scope};
pub use error::{ApiError, ErrorCode};
