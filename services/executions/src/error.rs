//! The executions service's errors. Its methods return them with `?`; the gRPC edge maps each to
//! the API's error (its code and status) once, here.

use oa_domain::status::ExecutionStatus;
use oa_domain::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ExecutionsError {
    #[error("Execution {0} not found")]
    NotFound(String),
    #[error("Dead letter {0} not found")]
    DeadLetterNotFound(String),
    /// A control the execution's status does not allow: `what` says what it needs.
    #[error("{what}; this one is {status}")]
    WrongStatus { what: &'static str, status: ExecutionStatus },
    #[error("cannot publish on the bus: {0}")]
    Bus(#[from] oa_bus::BusError),
    #[error(transparent)]
    Store(#[from] oa_store::StoreError),
    /// Already in the API's terms: bad input, a refused caller, another service's answer.
    #[error(transparent)]
    Api(#[from] ApiError),
}

oa_store::service_error!(ExecutionsError);

impl From<ExecutionsError> for ApiError {
    fn from(error: ExecutionsError) -> ApiError {
        match error {
            ExecutionsError::NotFound(_) => ApiError::new(ErrorCode::ExecutionNotFound, error.to_string()),
            ExecutionsError::DeadLetterNotFound(_) => ApiError::new(ErrorCode::NotFound, error.to_string()),
            ExecutionsError::WrongStatus { .. } => ApiError::new(ErrorCode::Conflict, error.to_string()),
            ExecutionsError::Bus(error) => {
                tracing::error!(%error, "cannot publish on the bus");
                ApiError::unavailable("event bus")
            }
            ExecutionsError::Store(error) => error.into(),
            ExecutionsError::Api(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_code_and_words() {
        let not_found = ApiError::from(ExecutionsError::NotFound("exec_1".into()));
        assert_eq!(
            (not_found.code, not_found.message.as_str()),
            (ErrorCode::ExecutionNotFound, "Execution exec_1 not found")
        );
        let wrong = ExecutionsError::WrongStatus {
            what: "Only a failed execution can be retried",
            status: ExecutionStatus::Running,
        };
        let wrong = ApiError::from(wrong);
        assert_eq!(
            (wrong.code, wrong.message.as_str()),
            (ErrorCode::Conflict, "Only a failed execution can be retried; this one is running")
        );
        let bad = ApiError::from(ExecutionsError::from(ApiError::bad_request("limit is 1 to 200")));
        assert_eq!(bad.code, ErrorCode::BadRequest);
    }
}
