//! Authentication of the plane: verifying Hub JWTs against the Hub's JWKS ([`HubVerifier`]),
//! minting development tokens ([`dev`]), and the internal service credential that every gRPC call
//! between the gateway and the services carries ([`service`]).
//!
//! Integration keys are resolved by `oa-tenancy`, which owns their table. This crate touches no
//! database.

pub mod actions;
pub mod dev;
pub mod jwt;
pub mod links;
pub mod service;

pub use jwt::{AuthError, HubClaims, HubVerifier, JwksSource};
