//! The credits service's errors. Its methods return them with `?`; the gRPC edge maps each to the
//! API's error (its code and status) once, here.

use oa_domain::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum CreditsError {
    #[error("Only the plane's engine reserves and settles credits")]
    EngineOnly,
    #[error("The org has {remaining} credits left this month")]
    Insufficient { remaining: i64 },
    #[error("This reservation was released; reserve under a new key")]
    Released,
    /// Concurrent reservations of one key kept racing: the caller retries.
    #[error("reservations of one key kept racing")]
    Contended,
    /// A commit or release the reservation's state refuses.
    #[error("{0}")]
    Settle(String),
    #[error(transparent)]
    Store(#[from] oa_store::StoreError),
    /// Already in the API's terms: bad input, a refused caller.
    #[error(transparent)]
    Api(#[from] ApiError),
}

oa_store::service_error!(CreditsError);

impl From<CreditsError> for ApiError {
    fn from(error: CreditsError) -> ApiError {
        match error {
            CreditsError::EngineOnly => ApiError::forbidden(error.to_string()),
            CreditsError::Insufficient { .. } => {
                ApiError::new(ErrorCode::CreditInsufficient, error.to_string())
            }
            CreditsError::Released => ApiError::new(ErrorCode::Conflict, error.to_string()),
            CreditsError::Contended => ApiError::unavailable("credits ledger"),
            CreditsError::Settle(message) => ApiError::bad_request(message),
            CreditsError::Store(error) => error.into(),
            CreditsError::Api(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_keeps_its_code_and_words() {
        let short = ApiError::from(CreditsError::Insufficient { remaining: 3 });
        assert_eq!(
            (short.code, short.message.as_str()),
            (ErrorCode::CreditInsufficient, "The org has 3 credits left this month")
        );
        assert_eq!(ApiError::from(CreditsError::Released).code, ErrorCode::Conflict);
        assert_eq!(ApiError::from(CreditsError::Contended).code, ErrorCode::ServiceUnavailable);
        let settle = ApiError::from(CreditsError::Settle("already committed".into()));
        assert_eq!((settle.code, settle.message.as_str()), (ErrorCode::BadRequest, "already committed"));
    }
}
