//! The REST routes of the API reference that services answer, one module per resource. Each
//! handler parses the request, forwards it over gRPC with the caller, and shapes the answer;
//! services own the rules and the permissions.

mod agents;
pub mod approvals;
mod credits;
mod events;
mod executions;
mod org;

use axum::Router;

use crate::AppState;

/// The `/api` routes of every resource.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(agents::router())
        .merge(events::router())
        .merge(executions::router())
        .merge(credits::router())
        .merge(org::router())
        .merge(approvals::router())
}
