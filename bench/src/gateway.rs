//! (g) The gateway's reads against a raw read of the same rows.
//!
//! The raw read is the least an HTTP edge in front of a gRPC service over Postgres can do: an
//! axum route calls a tonic service, which runs one query and returns the rows as JSON. It has
//! no auth, no org scope and no shaping. The gateway's reads (`GET /api/agents` and
//! `GET /api/executions?limit=50`, with a Hub token) do all of that through the real plane. Both
//! are loaded by `oha` (crates.io), a real HTTP load generator, in the same run: first as fast as
//! 16 connections go, then at a fixed 1,000 requests a second for the latency.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use oa_proto::bench::rows_client::RowsClient;
use oa_proto::bench::rows_server::{Rows, RowsServer};
use oa_proto::bench::{ReadReply, ReadRequest};
use oa_testkit::TestPlane;
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

/// Seconds each load runs.
const LOAD_SECONDS: u64 = 8;
/// Connections of the throughput runs.
const CONNECTIONS: usize = 16;
/// The fixed rate of the latency runs.
const FIXED_RATE: usize = 1_000;
/// Agents and executions of the measured org.
const AGENTS: usize = 10;
const EVENTS: usize = 100;

/// One query for the rows each gateway route reads, as JSON.
struct RawRows {
    pool: sqlx::PgPool,
}

#[tonic::async_trait]
impl Rows for RawRows {
    async fn read(
        &self,
        request: tonic::Request<ReadRequest>,
    ) -> Result<tonic::Response<ReadReply>, tonic::Status> {
        let request = request.into_inner();
        let query = match request.table.as_str() {
            "agents" => {
                "SELECT coalesce(json_agg(a ORDER BY a.created_at, a.id), '[]')::text FROM agents.agents a
                 WHERE a.deleted_at IS NULL AND (a.org_id = $1 OR a.org_id = 'system')"
            }
            "executions" => {
                "SELECT coalesce(json_agg(e), '[]')::text FROM
                 (SELECT * FROM executions.executions WHERE org_id = $1 ORDER BY id DESC LIMIT 50) e"
            }
            _ => return Err(tonic::Status::invalid_argument("table is agents or executions")),
        };
        let json: String = sqlx::query_scalar(query)
            .bind(&request.org_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|error| tonic::Status::internal(error.to_string()))?;
        Ok(tonic::Response::new(ReadReply { json }))
    }
}

async fn raw_read(
    State(client): State<RowsClient<Channel>>,
    Path((org_id, table)): Path<(String, String)>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String), axum::http::StatusCode> {
    let reply = client
        .clone()
        .read(ReadRequest { org_id, table })
        .await
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], reply.into_inner().json))
}

/// Starts the raw baseline on loopback: the tonic service, and the axum edge that calls it.
async fn start_raw(database_url: &str) -> anyhow::Result<SocketAddr> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(20).connect(database_url).await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RowsServer::new(RawRows { pool }))
            .serve_with_incoming(TcpListenerStream::new(grpc)),
    );
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))?.connect_lazy();
    let app = axum::Router::new()
        .route("/raw/{org_id}/{table}", axum::routing::get(raw_read))
        .with_state(RowsClient::new(channel));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = http.local_addr()?;
    tokio::spawn(async move { axum::serve(http, app).await });
    Ok(addr)
}

/// What one `oha` run measured.
struct Load {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Loads `url` with `oha` for `seconds`, with `connections`, at `rate` requests a second if set
/// (as fast as it goes otherwise); every response must be a 200.
async fn oha(
    url: &str,
    token: Option<&str>,
    seconds: u64,
    connections: usize,
    rate: Option<usize>,
) -> anyhow::Result<Load> {
    let mut command = tokio::process::Command::new("oha");
    command
        .args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline"])
        .args(["-z", &format!("{seconds}s")])
        .args(["-c", &connections.to_string()]);
    if let Some(rate) = rate {
        // Latency counted from when each request was due, not when it was sent.
        command.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .context("running oha (make bench installs it: cargo install oha)")?;
    anyhow::ensure!(output.status.success(), "oha failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).context("oha's JSON report")?;
    let codes = report["statusCodeDistribution"].as_object().context("oha's status codes")?;
    anyhow::ensure!(
        codes.keys().all(|code| code == "200") && !codes.is_empty(),
        "{url} answered other than 200: {codes:?}"
    );
    let errors = report["errorDistribution"].as_object().map_or(0, serde_json::Map::len);
    anyhow::ensure!(errors == 0, "{url}: requests failed: {}", report["errorDistribution"]);
    let seconds_to_ms = |value: &Value| value.as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(Load {
        requests_per_sec: report["summary"]["requestsPerSec"]
            .as_f64()
            .context("oha's requests per second")?,
        p50_ms: seconds_to_ms(&report["latencyPercentiles"]["p50"]),
        p99_ms: seconds_to_ms(&report["latencyPercentiles"]["p99"]),
    })
}

/// (g) Each gateway route against its raw read: throughput ratio, and p99 at 1,000 requests/s.
pub async fn gateway() -> anyhow::Result<Value> {
    let plane = TestPlane::start_with(|c| {
        c.gateway.rate_limit.enabled = false;
        c.telemetry.metrics_addr = None;
    })
    .await?;
    let org = crate::org_with_agents(&plane, "enterprise", AGENTS).await?;
    let events: Vec<oa_bus::Envelope> = (0..EVENTS).map(|n| crate::event(&org, n)).collect();
    plane.publish_many_on_bus(&events).await?;
    crate::wait_for_count(&plane, Some("completed"), (EVENTS * AGENTS) as i64, Duration::from_secs(120))
        .await?;
    let raw = start_raw(&plane.db.app_url.replace("one_agents_app@", "postgres@")).await?;
    let token = plane.token(&org, "admin");

    let mut routes = serde_json::Map::new();
    let (mut lowest_ratio, mut highest_p99) = (f64::INFINITY, 0.0_f64);
    for (route, path, table) in
        [("agents", "/api/agents", "agents"), ("executions", "/api/executions?limit=50", "executions")]
    {
        let gateway_url = plane.url(path);
        let raw_url = format!("http://{raw}/raw/{org}/{table}");
        // Both answer, and with the same rows.
        let (status, body) = plane.get_json(path, &org).await;
        anyhow::ensure!(status == 200, "{path}: {status} {body}");
        let rows: Value = reqwest::get(&raw_url).await?.json().await?;
        let listed = body[route].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            listed == rows.as_array().map_or(usize::MAX, Vec::len),
            "{path} lists {listed} rows; the raw read {}",
            rows.as_array().map_or(0, Vec::len)
        );
        // A warm-up of each, then each as fast as it goes, then the gateway at the fixed rate.
        oha(&raw_url, None, 2, CONNECTIONS, None).await?;
        oha(&gateway_url, Some(&token), 2, CONNECTIONS, None).await?;
        let raw_load = oha(&raw_url, None, LOAD_SECONDS, CONNECTIONS, None).await?;
        let gateway_load = oha(&gateway_url, Some(&token), LOAD_SECONDS, CONNECTIONS, None).await?;
        let fixed = oha(&gateway_url, Some(&token), LOAD_SECONDS, 2 * CONNECTIONS, Some(FIXED_RATE)).await?;
        let ratio = gateway_load.requests_per_sec / raw_load.requests_per_sec;
        lowest_ratio = lowest_ratio.min(ratio);
        highest_p99 = highest_p99.max(fixed.p99_ms);
        routes.insert(
            route.to_owned(),
            json!({
                "path": path,
                "rows": listed,
                "raw_requests_per_sec": raw_load.requests_per_sec,
                "raw_p99_ms": raw_load.p99_ms,
                "requests_per_sec": gateway_load.requests_per_sec,
                "p50_ms": gateway_load.p50_ms,
                "p99_ms": gateway_load.p99_ms,
                "ratio_to_raw": ratio,
                "at_1000_requests_per_sec": fixed.requests_per_sec,
                "p50_ms_at_1000": fixed.p50_ms,
                "p99_ms_at_1000": fixed.p99_ms,
            }),
        );
    }
    crate::drop_database(plane).await?;
    Ok(json!({
        "connections": CONNECTIONS,
        "load_seconds": LOAD_SECONDS,
        "load_generator": "oha",
        "routes": routes,
        "ratio_to_raw": lowest_ratio,
        "p99_ms_at_1000": highest_p99,
    }))
}
