//! The gateway's half of error mapping: an [`ApiError`] becomes the `{"error","message","status"}`
//! body here, and request bodies and queries are parsed by extractors that answer bad input with
//! that body instead of axum's plain-text rejections.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use oa_domain::{ApiError, ErrorCode};

/// An API error on its way out as an HTTP response.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.0.code.http_status();
        (status, axum::Json(self.0.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, Failure>;

/// JSON request bodies: malformed JSON is 400 `bad_request`, a wrong content type 415, a body over
/// the limit 413, always with the API's error body.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(Failure(json_rejection(rejection))),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("The request body does not have the expected shape: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("The request body is not valid JSON"),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "The request body must be sent with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        other => ApiError::bad_request(format!("The request body could not be read: {}", other.body_text())),
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, "The request body is larger than this API accepts")
}

/// Query strings: unknown values and bad types are 400 `bad_request` with the API's body.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(Failure(ApiError::bad_request(
                format!("Invalid query string: {}", e.body_text()),
            ))),
            Err(other) => Err(Failure(ApiError::bad_request(other.body_text()))),
        }
    }
}

pub async fn not_found() -> Failure {
    Failure(ApiError::new(ErrorCode::NotFound, "No such route"))
}

pub async fn method_not_allowed() -> Failure {
    Failure(ApiError::new(ErrorCode::MethodNotAllowed, "This route does not accept that method"))
}
