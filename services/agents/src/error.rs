//! The agents service's errors. Its methods return them with `?`; the gRPC edge maps each to the
//! API's error (its code and status) once, here.

use oa_domain::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// The same body for a missing id and another org's: ids cannot be probed.
    #[error("Agent {id} not found in org {org_id}")]
    NotFound { id: String, org_id: String },
    #[error(transparent)]
    Store(#[from] oa_store::StoreError),
    /// Already in the API's terms: an invalid definition, bad input, a refused caller, a cap.
    #[error(transparent)]
    Api(#[from] ApiError),
}

oa_store::service_error!(AgentsError);

impl From<AgentsError> for ApiError {
    fn from(error: AgentsError) -> ApiError {
        match error {
            AgentsError::NotFound { .. } => ApiError::new(ErrorCode::AgentNotFound, error.to_string()),
            AgentsError::Store(error) => error.into(),
            AgentsError::Api(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_orgs_agent_reads_as_missing() {
        let error = ApiError::from(AgentsError::NotFound { id: "agent_1".into(), org_id: "org_a".into() });
        assert_eq!(
            (error.code, error.message.as_str()),
            (ErrorCode::AgentNotFound, "Agent agent_1 not found in org org_a")
        );
    }
}
