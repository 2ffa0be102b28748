//! The admin port: Prometheus text on `/metrics`, for every role the process runs.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use oa_telemetry::metrics;

#[derive(Clone)]
struct Admin {
    role: String,
    pool: sqlx::PgPool,
}

pub fn router(role: String, pool: sqlx::PgPool) -> Router {
    Router::new().route("/metrics", get(render)).with_state(Admin { role, pool })
}

async fn render(State(admin): State<Admin>) -> impl IntoResponse {
    let idle = admin.pool.num_idle() as f64;
    let size = f64::from(admin.pool.size());
    let role = admin.role.clone();
    metrics::gauge!(metrics::DB_POOL_CONNECTIONS, "role" => role.clone(), "state" => "idle").set(idle);
    metrics::gauge!(metrics::DB_POOL_CONNECTIONS, "role" => role, "state" => "in_use").set(size - idle);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render(&admin.role))
}
