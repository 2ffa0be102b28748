//! The approvals service's errors. Its methods return them with `?`; the gRPC edge maps each to
//! the API's error (its code and status) once, here.

use oa_domain::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("Approval {0} not found")]
    NotFound(String),
    #[error("Only the plane's engine opens gates and mints links")]
    EngineOnly,
    #[error("This approval has expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] oa_store::StoreError),
    /// Already in the API's terms: bad input, a refused caller or link, a gate already decided.
    #[error(transparent)]
    Api(#[from] ApiError),
}

oa_store::service_error!(ApprovalsError);

impl From<ApprovalsError> for ApiError {
    fn from(error: ApprovalsError) -> ApiError {
        match error {
            ApprovalsError::NotFound(_) => ApiError::new(ErrorCode::ApprovalNotFound, error.to_string()),
            ApprovalsError::EngineOnly => ApiError::forbidden(error.to_string()),
            ApprovalsError::Expired => ApiError::new(ErrorCode::Conflict, error.to_string()),
            ApprovalsError::Store(error) => error.into(),
            ApprovalsError::Api(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_code_and_words() {
        let missing = ApiError::from(ApprovalsError::NotFound("appr_1".into()));
        assert_eq!(
            (missing.code, missing.message.as_str()),
            (ErrorCode::ApprovalNotFound, "Approval appr_1 not found")
        );
        assert_eq!(ApiError::from(ApprovalsError::EngineOnly).code, ErrorCode::Forbidden);
        assert_eq!(ApiError::from(ApprovalsError::Expired).message, "This approval has expired");
    }
}
