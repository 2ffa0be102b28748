//! The one `ErrorCode` of the API reference (plus the few the reference leaves implicit), mapped
//! once to `tonic::Code` and once to the HTTP status, and the `ApiError` that carries it across
//! gRPC and into the `{"error","message","status"}` body.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stable, documented error codes. The string form is what clients see in `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    CreditInsufficient,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AgentNotFound,
    ExecutionNotFound,
    ApprovalNotFound,
    TemplateNotFound,
    EventTypeNotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidAgentConfig,
    AgentLimitReached,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    InternalError,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::CreditInsufficient,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::AgentNotFound,
        ErrorCode::ExecutionNotFound,
        ErrorCode::ApprovalNotFound,
        ErrorCode::TemplateNotFound,
        ErrorCode::EventTypeNotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidAgentConfig,
        ErrorCode::AgentLimitReached,
        ErrorCode::QuotaExceeded,
        ErrorCode::RateLimited,
        ErrorCode::ServiceUnavailable,
        ErrorCode::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::CreditInsufficient => "credit_insufficient",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::AgentNotFound => "agent_not_found",
            ErrorCode::ExecutionNotFound => "execution_not_found",
            ErrorCode::ApprovalNotFound => "approval_not_found",
            ErrorCode::TemplateNotFound => "template_not_found",
            ErrorCode::EventTypeNotFound => "event_type_not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidAgentConfig => "invalid_agent_config",
            ErrorCode::AgentLimitReached => "agent_limit_reached",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::InternalError => "internal_error",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidAgentConfig => S::BAD_REQUEST,
            ErrorCode::Unauthorized => S::UNAUTHORIZED,
            ErrorCode::CreditInsufficient => S::PAYMENT_REQUIRED,
            ErrorCode::Forbidden => S::FORBIDDEN,
            ErrorCode::NotFound
            | ErrorCode::AgentNotFound
            | ErrorCode::ExecutionNotFound
            | ErrorCode::ApprovalNotFound
            | ErrorCode::TemplateNotFound
            | ErrorCode::EventTypeNotFound => S::NOT_FOUND,
            ErrorCode::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => S::CONFLICT,
            ErrorCode::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::AgentLimitReached | ErrorCode::QuotaExceeded | ErrorCode::RateLimited => {
                S::TOO_MANY_REQUESTS
            }
            ErrorCode::ServiceUnavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::InternalError => S::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
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

    /// Whether the same request may succeed if sent again unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::ServiceUnavailable | ErrorCode::InternalError)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the API answers it. Messages are human sentences; internal details
/// (SQL, stack text) never go in them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

/// The wire body: `{"error","message","status"}` plus `details` where useful.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub details: Option<Value>,
}

const DETAILS_METADATA_KEY: &str = "x-oneagents-error-details-bin";
const CODE_METADATA_KEY: &str = "x-oneagents-error-code";

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthorized() -> Self {
        // One body for every authentication failure, so a caller learns nothing about why.
        ApiError::new(ErrorCode::Unauthorized, "Missing or invalid authentication")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn internal() -> Self {
        ApiError::new(ErrorCode::InternalError, "An internal error occurred; it has been logged")
    }

    /// Logs the cause with context and answers the generic internal error.
    pub fn internal_from(context: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, context, "internal error");
        ApiError::internal()
    }

    pub fn unavailable(what: &str) -> Self {
        ApiError::new(ErrorCode::ServiceUnavailable, format!("The {what} is unavailable; retry shortly"))
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.as_str().to_owned(),
            message: self.message.clone(),
            status: self.code.http_status().as_u16(),
            details: self.details.clone(),
        }
    }

    /// Encodes the error as a gRPC status; the code and details ride in metadata so the gateway
    /// restores the exact API error.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code.grpc_code(), self.message.clone());
        if let Ok(value) = self.code.as_str().parse() {
            status.metadata_mut().insert(CODE_METADATA_KEY, value);
        }
        if let Some(details) = &self.details {
            let bytes = serde_json::to_vec(details).unwrap_or_default();
            status
                .metadata_mut()
                .insert_bin(DETAILS_METADATA_KEY, tonic::metadata::MetadataValue::from_bytes(&bytes));
        }
        status
    }

    /// Restores an `ApiError` from a gRPC status. A status that did not come from a service of
    /// the plane (transport failure, timeout) becomes `service_unavailable` or `internal_error`.
    pub fn from_status(status: &tonic::Status) -> Self {
        let code =
            status.metadata().get(CODE_METADATA_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::parse);
        match code {
            Some(code) => {
                let details = status
                    .metadata()
                    .get_bin(DETAILS_METADATA_KEY)
                    .and_then(|v| v.to_bytes().ok())
                    .and_then(|b| serde_json::from_slice(&b).ok());
                ApiError { code, message: status.message().to_owned(), details }
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
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        error.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn reference_codes_map_to_reference_statuses() {
        let expected = [
            ("unauthorized", 401),
            ("forbidden", 403),
            ("agent_not_found", 404),
            ("execution_not_found", 404),
            ("credit_insufficient", 402),
            ("agent_limit_reached", 429),
            ("invalid_agent_config", 400),
        ];
        for (name, status) in expected {
            let code = ErrorCode::parse(name).unwrap();
            assert_eq!(code.http_status().as_u16(), status, "{name}");
        }
    }

    #[test]
    fn an_api_error_survives_a_grpc_round_trip_with_its_details() {
        let error = ApiError::new(ErrorCode::InvalidAgentConfig, "Agent definition failed validation")
            .with_details(serde_json::json!([{"path": "steps[0].id", "message": "missing"}]));
        let restored = ApiError::from_status(&error.to_status());
        assert_eq!(restored, error);
    }

    #[test]
    fn a_foreign_grpc_failure_never_leaks_its_text() {
        let status = tonic::Status::internal("relation \"agents\" does not exist");
        let restored = ApiError::from_status(&status);
        assert_eq!(restored.code, ErrorCode::InternalError);
        assert!(!restored.message.contains("relation"));
    }
}
