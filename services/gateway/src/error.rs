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

/// The HTTP status of an error code: the number the reference gives it.
pub fn http_status(code: ErrorCode) -> http::StatusCode {
    http::StatusCode::from_u16(code.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = http_status(self.0.code);
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
        let value = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(Failure(json_rejection(rejection))),
        };
        refuse_nul(&value)?;
        serde_path_to_error::deserialize(value).map(ApiJson).map_err(|e| {
            Failure(ApiError::bad_request(format!("The request body does not have the expected shape: {e}")))
        })
    }
}

/// A NUL character cannot be stored and would poison whatever carries it on: refused at the edge.
pub fn refuse_nul(body: &serde_json::Value) -> Result<(), Failure> {
    match oa_domain::hostile::find_nul(body, "") {
        None => Ok(()),
        Some(path) => Err(Failure(ApiError::bad_request(format!(
            "The request body holds a NUL character (\\u0000) at {}; strings may not contain one",
            if path.is_empty() { "its root" } else { &path }
        )))),
    }
}

/// Refuses a request whose path or query decodes to a NUL character, naming the query parameter.
pub async fn refuse_nul_in_uri(request: Request, next: axum::middleware::Next) -> Response {
    use oa_domain::hostile::encodes_nul;
    let uri = request.uri();
    if encodes_nul(uri.path()) {
        return Failure(ApiError::bad_request("The request path holds a NUL character (%00)"))
            .into_response();
    }
    if let Some(query) = uri.query().filter(|q| encodes_nul(q)) {
        let name = query
            .split('&')
            .find(|pair| encodes_nul(pair))
            .map(|pair| pair.split('=').next().unwrap_or_default())
            .filter(|name| !encodes_nul(name))
            .unwrap_or("a query parameter name");
        let message = format!("The query parameter {name} holds a NUL character (%00)");
        return Failure(ApiError::bad_request(message)).into_response();
    }
    next.run(request).await
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::bad_request(format!(
            "The request body does not have the expected shape: {}",
            e.body_text()
        )),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("The request body is not valid JSON"),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "The request body must be sent with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE => too_large(),
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
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(Failure(ApiError::bad_request(format!("Invalid query string: {}", e.body_text()))))
            }
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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;
    use http::Request;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: String,
    }

    async fn echo(ApiJson(_): ApiJson<Named>) -> &'static str {
        "ok"
    }

    async fn send(content_type: Option<&str>, body: Body) -> (u16, serde_json::Value) {
        let app = Router::new().route("/echo", post(echo)).layer(DefaultBodyLimit::max(64));
        let mut request = Request::post("/echo");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = app.oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn malformed_json_is_400_bad_request_with_the_api_body() {
        let (status, body) = send(Some("application/json"), Body::from("{\"name\": ")).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "bad_request");
        assert_eq!(body["status"], 400);
    }

    #[tokio::test]
    async fn a_body_of_the_wrong_shape_is_400_naming_the_problem() {
        let (status, body) = send(Some("application/json"), Body::from("{\"name\": 5}")).await;
        assert_eq!(status, 400);
        assert!(body["message"].as_str().unwrap().contains("name"), "{body}");
    }

    #[tokio::test]
    async fn a_missing_content_type_is_415() {
        let (status, body) = send(None, Body::from("{\"name\": \"x\"}")).await;
        assert_eq!((status, body["error"].as_str()), (415, Some("unsupported_media_type")));
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_413() {
        let chunks = futures_chunks(vec![vec![b' '; 50], vec![b' '; 50]]);
        let (status, body) = send(Some("application/json"), Body::from_stream(chunks)).await;
        assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")));
    }

    fn futures_chunks(
        chunks: Vec<Vec<u8>>,
    ) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
        tokio_stream::iter(chunks.into_iter().map(Ok))
    }
}
