//! What callers of a service share with the service: the conversions of its messages to and from
//! the domain, and helpers that call it. A service crate depends on this crate, never on another
//! service's crate.

pub mod catalog;
