//! The gateway's request metrics: counts, latency and requests in flight, labelled by route
//! template (never the raw path, which holds ids), method and status class.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use oa_telemetry::metrics;

/// The route template a request matched, carried from routing out to [`record`].
#[derive(Clone)]
struct RouteTemplate(String);

/// Runs on matched routes only: notes the template in the response.
pub async fn remember_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| RouteTemplate(path.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Decrements the in-flight gauge however the request ends (a dropped connection included).
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        metrics::gauge!(metrics::HTTP_IN_FLIGHT, "role" => "gateway").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(metrics::HTTP_IN_FLIGHT, "role" => "gateway").decrement(1.0);
    }
}

/// The outermost layer: times and counts every request.
pub async fn record(request: Request, next: Next) -> Response {
    let _in_flight = InFlight::start();
    let started = Instant::now();
    let method = known_method(request.method());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map(|route| route.0.clone())
        .unwrap_or_else(|| "unmatched".to_owned());
    let class = metrics::status_class(response.status().as_u16());
    metrics::counter!(metrics::HTTP_REQUESTS, "role" => "gateway", "route" => route.clone(),
        "method" => method, "status_class" => class)
    .increment(1);
    metrics::histogram!(metrics::HTTP_REQUEST_DURATION, "role" => "gateway", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The method as a bounded label: the standard ones by name, anything else as `other`.
fn known_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
