//! The API's errors on gRPC: each `ErrorCode` has its `tonic::Code`, and an `ApiError` crosses a
//! call whole (its code and details ride in metadata), so the gateway answers exactly what the
//! service said. Transport failures that no service of the plane answered become
//! `service_unavailable` or `internal_error`, and never leak their text.

use oa_domain::{ApiError, ErrorCode};

const DETAILS_METADATA_KEY: &str = "x-oneagents-error-details-bin";
const CODE_METADATA_KEY: &str = "x-oneagents-error-code";

pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use tonic::Code as C;
    match code {
        ErrorCode::BadRequest
        | ErrorCode::InvalidAgentConfig
        | ErrorCode::PayloadTooLarge
        | ErrorCode::UnsupportedMediaType => C::InvalidArgument,
        ErrorCode::MethodNotAllowed => C::Unimplemented,
        ErrorCode::Unauthorized => C::Unauthenticated,
        ErrorCode::Forbidden => C::PermissionDenied,
        ErrorCode::NotFound
        | ErrorCode::AgentNotFound
        | ErrorCode::ExecutionNotFound
        | ErrorCode::ApprovalNotFound
        | ErrorCode::TemplateNotFound
        | ErrorCode::EventTypeNotFound => C::NotFound,
        ErrorCode::Conflict => C::Aborted,
        ErrorCode::CreditInsufficient
        | ErrorCode::AgentLimitReached
        | ErrorCode::QuotaExceeded
        | ErrorCode::RateLimited => C::ResourceExhausted,
        ErrorCode::ServiceUnavailable => C::Unavailable,
        ErrorCode::InternalError => C::Internal,
    }
}

/// Encodes an API error as a gRPC status.
pub fn to_status(error: &ApiError) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(error.code), error.message.clone());
    if let Ok(value) = error.code.as_str().parse() {
        status.metadata_mut().insert(CODE_METADATA_KEY, value);
    }
    if let Some(details) = &error.details {
        let bytes = serde_json::to_vec(details).unwrap_or_default();
        status
            .metadata_mut()
            .insert_bin(DETAILS_METADATA_KEY, tonic::metadata::MetadataValue::from_bytes(&bytes));
    }
    status
}

/// Restores the API error a gRPC status carries.
pub fn api_error(status: &tonic::Status) -> ApiError {
    let code =
        status.metadata().get(CODE_METADATA_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::parse);
    match code {
        Some(code) => {
            let details = status
                .metadata()
                .get_bin(DETAILS_METADATA_KEY)
                .and_then(|v| v.to_bytes().ok())
                .and_then(|b| serde_json::from_slice(&b).ok());
            let error = ApiError::new(code, status.message());
            match details {
                Some(details) => error.with_details(details),
                None => error,
            }
        }
        None => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                ApiError::unavailable("service")
            }
            tonic::Code::Unauthenticated => ApiError::unauthorized(),
            _ => ApiError::internal_from("grpc call", &status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_survives_a_grpc_round_trip_with_its_details() {
        let error = ApiError::new(ErrorCode::InvalidAgentConfig, "Agent definition failed validation")
            .with_details(serde_json::json!([{"path": "steps[0].id", "message": "missing"}]));
        assert_eq!(api_error(&to_status(&error)), error);
        let plain = ApiError::new(ErrorCode::CreditInsufficient, "0 left");
        assert_eq!(api_error(&to_status(&plain)), plain);
    }

    #[test]
    fn a_foreign_grpc_failure_never_leaks_its_text() {
        let restored = api_error(&tonic::Status::internal("relation \"agents\" does not exist"));
        assert_eq!(restored.code, ErrorCode::InternalError);
        assert!(!restored.message.contains("relation"));
        assert_eq!(
            api_error(&tonic::Status::unavailable("connection refused")).code,
            ErrorCode::ServiceUnavailable
        );
    }

    #[test]
    fn every_code_has_a_grpc_code_that_matches_its_class() {
        for code in ErrorCode::ALL {
            let grpc = grpc_code(code);
            match code.status() {
                404 => assert_eq!(grpc, tonic::Code::NotFound, "{code}"),
                503 => assert_eq!(grpc, tonic::Code::Unavailable, "{code}"),
                429 | 402 => assert_eq!(grpc, tonic::Code::ResourceExhausted, "{code}"),
                _ => {}
            }
        }
    }
}
