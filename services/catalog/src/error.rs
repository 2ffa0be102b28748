//! The catalog service's errors. Its methods return them with `?`; the gRPC edge maps each to the
//! API's error (its code and status) once, here.

use oa_domain::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("Event type {0} is not in the catalog")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] oa_store::StoreError),
    /// Already in the API's terms: an invalid event type, a refused key, fields still in use.
    #[error(transparent)]
    Api(#[from] ApiError),
}

oa_store::service_error!(CatalogError);

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> ApiError {
        match error {
            CatalogError::NotFound(_) => ApiError::new(ErrorCode::EventTypeNotFound, error.to_string()),
            CatalogError::Store(error) => error.into(),
            CatalogError::Api(error) => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_event_type_says_so() {
        let error = ApiError::from(CatalogError::NotFound("psa:ticket.melted".into()));
        assert_eq!(error.code, ErrorCode::EventTypeNotFound);
        assert_eq!(error.message, "Event type psa:ticket.melted is not in the catalog");
    }
}
