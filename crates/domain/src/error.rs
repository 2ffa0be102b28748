//! The one `ErrorCode` of the API reference (plus the few the reference leaves implicit), with the
//! status number the reference gives it, and the `ApiError` that carries it into the
//! `{"error","message","status"}` body. The transports' mappings live at the edges: gRPC's in
//! `oa_proto::status`, HTTP's in the gateway.

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

    /// The HTTP status the reference gives this code (the `status` of the error body).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidAgentConfig => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::CreditInsufficient => 402,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound
            | ErrorCode::AgentNotFound
            | ErrorCode::ExecutionNotFound
            | ErrorCode::ApprovalNotFound
            | ErrorCode::TemplateNotFound
            | ErrorCode::EventTypeNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::AgentLimitReached | ErrorCode::QuotaExceeded | ErrorCode::RateLimited => 429,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::InternalError => 500,
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
            status: self.code.status(),
            details: self.details.clone(),
        }
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
            assert_eq!(code.status(), status, "{name}");
        }
    }
}
