//! `make bench`: measures, in one run on this machine against the local Postgres and NATS,
//! (a) ingest: events published for 100 orgs with 10 active agents each, until every matching
//!     execution is persisted, and event-to-execution latency at a fixed 1,000 events/s;
//! (b) the machine's raw limit: a minimal consume → insert → ack loop doing the same writes;
//! (c) engine overhead: one execution of 40 `transform` steps, time per step;
//! (d) observability overhead: ingest with metrics and sampled tracing on, against both off.
//! (e) noisy neighbour, (f) memory, (g) the gateway's reads against a raw read of the same rows.
//! Results go to `bench/results/latest.json` with the machine and commit they were measured on.

mod gateway;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use oa_bus::Envelope;
use oa_bus::async_nats::jetstream::{self, consumer::pull, stream};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

const ORGS: usize = 100;
const AGENTS_PER_ORG: usize = 10;
const LATENCY_RATE: usize = 1_000;
const LATENCY_SECONDS: usize = 5;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn agent(index: usize) -> Value {
    agent_with_steps(
        index,
        json!([{"id": "note", "type": "transform", "output": {"t": "{{ event_payload.ticket_id }}"}}]),
    )
}

fn agent_with_steps(index: usize, steps: Value) -> Value {
    json!({
        "name": format!("Bench agent {index}"), "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created",
                    "filters": [{"field": "priority", "operator": "eq", "value": "p1"}]},
        "steps": steps,
        "client_scope": "all"
    })
}

fn reasoning_agent(index: usize) -> Value {
    agent_with_steps(
        index,
        json!([{"id": "triage", "type": "ai_reason", "model_tier": "quick",
        "prompt": "Triage {{ event_payload.ticket_id }}",
        "output_schema": {"type": "object", "properties": {"priority": {"type": "string", "enum": ["p1", "p2"]}}}}]),
    )
}

fn event(org: &str, n: usize) -> Envelope {
    Envelope::new(
        org,
        "psa",
        "ticket.created",
        json!({"ticket_id": format!("tkt_{n}"), "priority": "p1", "client_id": "cl_bench"}),
    )
}

/// Publishes `batch` on the bus, 512 in flight, every one confirmed.
async fn publish_all(
    js: &jetstream::Context,
    topology: &oa_bus::Topology,
    batch: &[Envelope],
) -> anyhow::Result<()> {
    futures::stream::iter(batch)
        .map(|e| oa_bus::publish_event(js, topology, e))
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

async fn send(request: reqwest::RequestBuilder, expected: u16) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status == expected, "expected {expected}, got {status}: {body}");
    Ok(body)
}

/// Creates the orgs, each with its agents active and the system agents paused.
async fn setup_orgs(plane: &TestPlane) -> anyhow::Result<Vec<String>> {
    setup_orgs_with(plane, agent).await
}

async fn setup_orgs_with(plane: &TestPlane, agent: fn(usize) -> Value) -> anyhow::Result<Vec<String>> {
    let mut orgs = Vec::new();
    for _ in 0..ORGS {
        orgs.push(plane.db.create_org("enterprise").await?);
    }
    futures::stream::iter(orgs.clone())
        .map(|org| async move {
            for system in ["agent_system_dispatch"] {
                let pause = plane.as_user(Method::PUT, &format!("/api/agents/{system}"), &org, "admin");
                send(pause.json(&json!({"status": "paused"})), 200).await?;
            }
            for i in 0..AGENTS_PER_ORG {
                let created =
                    send(plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&agent(i)), 201)
                        .await?;
                let id = created["id"].as_str().context("an agent id")?.to_owned();
                let activate = plane.as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin");
                send(activate.json(&json!({"status": "active"})), 200).await?;
            }
            anyhow::Ok(())
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(orgs)
}

/// Waits until the plane holds `expected` executions (in `status`, or in any status); returns when.
async fn wait_for_count(
    plane: &TestPlane,
    status: Option<&str>,
    expected: i64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM executions.executions WHERE $1::text IS NULL OR status = $1",
        )
        .bind(status)
        .fetch_one(&plane.db.admin)
        .await?;
        if count >= expected {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {expected} executions");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops a plane and drops its database, so that the server does not vacuum a finished run's
/// rows during the next one.
async fn drop_database(plane: TestPlane) -> anyhow::Result<()> {
    let name = plane.db.name.clone();
    drop(plane);
    let root = oa_store::admin_pool(&oa_testkit::admin_url()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&root)
        .await?;
    root.close().await;
    Ok(())
}

/// The CPU seconds used so far by the machine's live `postgres` and `nats-server` processes.
fn servers_cpu_seconds() -> (f64, f64) {
    let (mut postgres, mut nats) = (0.0, 0.0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(seconds) = oa_telemetry::metrics::cpu_seconds_in_stat(&stat) else { continue };
        if stat.contains("(postgres) ") {
            postgres += seconds;
        } else if stat.contains("(nats-server) ") {
            nats += seconds;
        }
    }
    (postgres, nats)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// (a) Ingest throughput and latency through the real plane. Without `metrics`, the plane serves
/// no metrics and records none.
async fn ingest(events: usize, metrics: bool) -> anyhow::Result<Value> {
    let plane = TestPlane::start_with(|c| {
        c.nats.work_concurrency = 0;
        c.gateway.rate_limit.enabled = false;
        c.database.max_connections = 40;
        if !metrics {
            c.telemetry.metrics_addr = None;
        }
    })
    .await?;
    let orgs = setup_orgs(&plane).await?;
    let client = oa_bus::connect(&plane.config.nats).await?;
    let js = jetstream::new(client);
    let topology = oa_bus::Topology::new(&plane.config.nats);
    oa_bus::ensure_streams(&js, &topology).await?;

    // Warm the per-org agent index so the run measures steady state.
    for (i, org) in orgs.iter().enumerate() {
        oa_bus::publish_event(&js, &topology, &event(org, i)).await?;
    }
    let warm = (orgs.len() * AGENTS_PER_ORG) as i64;
    wait_for_count(&plane, None, warm, Duration::from_secs(120)).await?;

    let batch: Vec<Envelope> = (0..events).map(|n| event(&orgs[n % orgs.len()], 1_000_000 + n)).collect();
    // Start the window with no checkpoint owed for earlier runs' writes.
    sqlx::query("CHECKPOINT").execute(&plane.db.admin).await?;
    let cpu_before = oa_telemetry::metrics::process_cpu_seconds().unwrap_or_default();
    let servers_before = servers_cpu_seconds();
    let started = Instant::now();
    publish_all(&js, &topology, &batch).await?;
    let published = started.elapsed();
    let expected = warm + (events * AGENTS_PER_ORG) as i64;
    let done = wait_for_count(&plane, None, expected, Duration::from_secs(600)).await?;
    let elapsed = done.duration_since(started).as_secs_f64();
    let cpu = oa_telemetry::metrics::process_cpu_seconds().unwrap_or_default() - cpu_before;
    let servers_after = servers_cpu_seconds();

    // Latency at a fixed offered rate.
    let total = LATENCY_RATE * LATENCY_SECONDS;
    let mut sent: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::with_capacity(total);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let per_tick = LATENCY_RATE / 100;
    let mut n = 0;
    while n < total {
        ticker.tick().await;
        let tick: Vec<Envelope> =
            (0..per_tick).map(|k| event(&orgs[(n + k) % orgs.len()], 2_000_000 + n + k)).collect();
        for e in &tick {
            sent.insert(e.id.clone(), e.occurred_at);
        }
        let publishes = tick.iter().map(|e| oa_bus::publish_event(&js, &topology, e));
        for result in futures::future::join_all(publishes).await {
            result?;
        }
        n += per_tick;
    }
    wait_for_count(&plane, None, expected + (total * AGENTS_PER_ORG) as i64, Duration::from_secs(600))
        .await?;
    let ids: Vec<String> = sent.keys().cloned().collect();
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT event_id, max(created_at) FROM executions.executions WHERE event_id = ANY($1) GROUP BY event_id",
    )
    .bind(&ids)
    .fetch_all(&plane.db.admin)
    .await?;
    let mut latencies: Vec<f64> = rows
        .iter()
        .map(|(id, created)| (*created - sent[id]).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    drop_database(plane).await?;
    Ok(json!({
        "orgs": ORGS,
        "agents_per_org": AGENTS_PER_ORG,
        "events": events,
        "executions_created": events * AGENTS_PER_ORG,
        "events_per_sec": events as f64 / elapsed,
        "executions_per_sec": (events * AGENTS_PER_ORG) as f64 / elapsed,
        "process_cpu_ms_per_event": cpu * 1000.0 / events as f64,
        "postgres_cpu_ms_per_event": (servers_after.0 - servers_before.0) * 1000.0 / events as f64,
        "nats_cpu_ms_per_event": (servers_after.1 - servers_before.1) * 1000.0 / events as f64,
        "publish_seconds": published.as_secs_f64(),
        "latency_offered_rate_per_sec": LATENCY_RATE,
        "latency_events": latencies.len(),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
    }))
}

/// (b) The raw limit: the same bus and database, a minimal consume → insert 10 rows → ack loop.
async fn raw_limit(events: usize) -> anyhow::Result<Value> {
    let db = oa_testkit::TestDb::create().await?;
    sqlx::query(
        "CREATE TABLE bench_raw (id text PRIMARY KEY, event_id text NOT NULL, agent int NOT NULL, payload jsonb NOT NULL,
                                 created_at timestamptz NOT NULL DEFAULT clock_timestamp(), UNIQUE (event_id, agent))",
    )
    .execute(&db.admin)
    .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&db.app_url.replace("one_agents_app@", "postgres@"))
        .await?;
    let tag = oa_testkit::unique("raw");
    let client = oa_bus::connect(&oa_config_nats()).await?;
    let js = jetstream::new(client);
    let name = format!("RAW_{tag}");
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{tag}.>")],
        ..Default::default()
    })
    .await?;
    let consumer = js
        .get_stream(&name)
        .await?
        .get_or_create_consumer(
            "raw",
            pull::Config { durable_name: Some("raw".into()), max_ack_pending: 10_000, ..Default::default() },
        )
        .await?;
    let started = Instant::now();
    let publishing = {
        let js = js.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..events)
                .map(|n| {
                    let body = serde_json::to_vec(&event("org_raw", n)).unwrap_or_default();
                    let js = js.clone();
                    let subject = format!("{tag}.e");
                    async move { oa_bus::publish_raw(&js, subject, &format!("raw{n}"), body.into()).await }
                })
                .buffer_unordered(512)
                .collect::<Vec<_>>()
                .await
        })
    };
    let mut messages = consumer.messages().await?.take(events);
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut handled = 0;
    while handled < events {
        tokio::select! {
            Some(message) = messages.next(), if inflight.len() < 64 => {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                let pool = pool.clone();
                inflight.push(async move {
                    let envelope: Envelope = serde_json::from_slice(&message.payload)?;
                    let mut tx = pool.begin().await?;
                    let ids: Vec<String> = (0..AGENTS_PER_ORG).map(|a| format!("{}_{a}", envelope.id)).collect();
                    let agents: Vec<i32> = (0..AGENTS_PER_ORG as i32).collect();
                    sqlx::query(
                        "INSERT INTO bench_raw (id, event_id, agent, payload)
                         SELECT i, $2, a, $3 FROM unnest($1::text[], $4::int[]) AS u(i, a) ON CONFLICT DO NOTHING",
                    )
                    .bind(&ids)
                    .bind(&envelope.id)
                    .bind(&envelope.payload)
                    .bind(&agents)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    message.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    anyhow::Ok(())
                });
            }
            Some(result) = inflight.next() => {
                result?;
                handled += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    publishing.await?.into_iter().collect::<Result<Vec<_>, _>>()?;
    let _ = js.delete_stream(&name).await;
    Ok(json!({ "events": events, "events_per_sec": events as f64 / elapsed }))
}

fn oa_config_nats() -> oa_config::NatsConfig {
    oa_config::NatsConfig { url: oa_testkit::nats_url(), ..Default::default() }
}

/// Executions completed per second when every matched execution runs one `quick` ai_reason step
/// against the sandbox model, with credits metering on (a price, so reserve + commit) or off.
async fn metered_throughput(events: usize, metering: bool) -> anyhow::Result<f64> {
    let plane = TestPlane::start_with(|c| {
        c.gateway.rate_limit.enabled = false;
        c.database.max_connections = 40;
        if !metering {
            c.credits.prices.insert("quick".into(), 0);
        }
    })
    .await?;
    let orgs = setup_orgs_with(&plane, reasoning_agent).await?;
    let client = oa_bus::connect(&plane.config.nats).await?;
    let js = jetstream::new(client);
    let topology = oa_bus::Topology::new(&plane.config.nats);
    let batch: Vec<Envelope> = (0..events).map(|n| event(&orgs[n % orgs.len()], 3_000_000 + n)).collect();
    let started = Instant::now();
    publish_all(&js, &topology, &batch).await?;
    let expected = (events * AGENTS_PER_ORG) as i64;
    let done = wait_for_count(&plane, Some("completed"), expected, Duration::from_secs(900)).await?;
    Ok(expected as f64 / done.duration_since(started).as_secs_f64())
}

/// (c) Engine overhead: one execution of 40 transform steps.
async fn engine() -> anyhow::Result<Value> {
    let plane = TestPlane::start_with(|c| c.gateway.rate_limit.enabled = false).await?;
    let org = plane.db.create_org("pro").await?;
    send(
        plane
            .as_user(Method::PUT, "/api/agents/agent_system_dispatch", &org, "admin")
            .json(&json!({"status": "paused"})),
        200,
    )
    .await?;
    let steps: Vec<Value> = (0..40)
        .map(|i| {
            let previous = if i == 0 { "{{ event_payload.ticket_id }}".to_owned() } else { format!("{{{{ steps.s{}.output.v }}}}", i - 1) };
            json!({"id": format!("s{i}"), "type": "transform", "output": {"v": previous, "n": format!("step {i} of {{{{ event.event_type }}}}")}})
        })
        .collect();
    let mut definition = agent(0);
    definition["steps"] = json!(steps);
    let created =
        send(plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&definition), 201).await?;
    let id = created["id"].as_str().context("an agent id")?.to_owned();
    send(
        plane
            .as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin")
            .json(&json!({"status": "active"})),
        200,
    )
    .await?;
    let mut per_step = Vec::new();
    for run in 0..7 {
        plane.publish_on_bus(&event(&org, run)).await?;
        wait_for_count(&plane, Some("completed"), run as i64 + 1, Duration::from_secs(60)).await?;
    }
    let rows: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT started_at, completed_at FROM executions.executions WHERE status = 'completed' ORDER BY created_at",
    )
    .fetch_all(&plane.db.admin)
    .await?;
    for (started, completed) in rows.iter().skip(2) {
        per_step.push((*completed - *started).num_microseconds().unwrap_or(0) as f64 / 1000.0 / 40.0);
    }
    per_step.sort_by(|a, b| a.total_cmp(b));
    Ok(
        json!({ "steps": 40, "runs": per_step.len(), "ms_per_step": percentile(&per_step, 50.0), "ms_per_step_max": per_step.last() }),
    )
}

/// An org of `tier` with one active transform agent and the system agents left out.
async fn org_with_agent(plane: &TestPlane, tier: &str) -> anyhow::Result<String> {
    org_with_agents(plane, tier, 1).await
}

/// An org of `tier` with `count` active transform agents and the system agents left out.
async fn org_with_agents(plane: &TestPlane, tier: &str, count: usize) -> anyhow::Result<String> {
    let org = plane.db.create_org(tier).await?;
    let pause = plane.as_user(Method::PUT, "/api/agents/agent_system_dispatch", &org, "admin");
    send(pause.json(&json!({"status": "paused"})), 200).await?;
    for i in 0..count {
        let created =
            send(plane.as_user(Method::POST, "/api/agents", &org, "admin").json(&agent(i)), 201).await?;
        let id = created["id"].as_str().context("an agent id")?.to_owned();
        let activate = plane.as_user(Method::PUT, &format!("/api/agents/{id}"), &org, "admin");
        send(activate.json(&json!({"status": "active"})), 200).await?;
    }
    Ok(org)
}

/// Completed executions of `org`.
async fn completed_of(plane: &TestPlane, org: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM executions.executions WHERE org_id = $1 AND status = 'completed'",
    )
    .bind(org)
    .fetch_one(&plane.db.admin)
    .await?)
}

/// Sends `rate` events a second for `org` until `stop`; returns their ids with when each was sent.
async fn trickle(
    plane: &TestPlane,
    org: &str,
    rate: u64,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    let client = oa_bus::connect(&plane.config.nats).await?;
    let js = jetstream::new(client);
    let topology = oa_bus::Topology::new(&plane.config.nats);
    let mut ticker = tokio::time::interval(Duration::from_millis(1_000 / rate.max(1)));
    let mut sent = Vec::new();
    let mut n = 5_000_000;
    while !stop.is_cancelled() {
        ticker.tick().await;
        let event = event(org, n);
        n += 1;
        oa_bus::publish_event(&js, &topology, &event).await?;
        sent.push((event.id.clone(), event.occurred_at));
    }
    Ok(sent)
}

/// Event → execution completed, in ms, of each event `sent` (waits until they all completed).
async fn completion_latencies(
    plane: &TestPlane,
    org: &str,
    sent: &[(String, chrono::DateTime<chrono::Utc>)],
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed_of(plane, org).await? < sent.len() as i64 {
        anyhow::ensure!(Instant::now() < deadline, "{org}'s trickle did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<&str> = sent.iter().map(|(id, _)| id.as_str()).collect();
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT event_id, completed_at FROM executions.executions WHERE org_id = $1 AND event_id = ANY($2)",
    )
    .bind(org)
    .bind(&ids)
    .fetch_all(&plane.db.admin)
    .await?;
    let at: HashMap<&str, chrono::DateTime<chrono::Utc>> =
        sent.iter().map(|(id, t)| (id.as_str(), *t)).collect();
    let mut latencies: Vec<f64> = rows
        .iter()
        .map(|(id, done)| (*done - at[id.as_str()]).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(latencies)
}

/// Publishes `events` for `org` at once and returns executions completed per second.
async fn flood(plane: &TestPlane, org: &str, events: usize) -> anyhow::Result<f64> {
    let client = oa_bus::connect(&plane.config.nats).await?;
    let js = jetstream::new(client);
    let topology = oa_bus::Topology::new(&plane.config.nats);
    let batch: Vec<Envelope> = (0..events).map(|n| event(org, 7_000_000 + n)).collect();
    let started = Instant::now();
    publish_all(&js, &topology, &batch).await?;
    let deadline = started + Duration::from_secs(900);
    while completed_of(plane, org).await? < events as i64 {
        anyhow::ensure!(Instant::now() < deadline, "the flood did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// (e) Noisy neighbour: org B sends 10 events a second, alone and while org A floods `events`;
/// A's flood alone and beside B. Each scenario on a fresh plane.
async fn noisy_neighbour(events: usize, trickle_seconds: u64) -> anyhow::Result<Value> {
    let config = |c: &mut oa_config::Config| {
        c.gateway.rate_limit.enabled = false;
        c.database.max_connections = 40;
        c.telemetry.metrics_addr = None;
    };
    // Alone: B's trickle, then A's flood.
    let plane = TestPlane::start_with(config).await?;
    let (a, b) = (org_with_agent(&plane, "enterprise").await?, org_with_agent(&plane, "starter").await?);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(trickle_seconds)).await;
        stopping.cancel();
    });
    let sent = trickle(&plane, &b, 10, stop).await?;
    let alone = completion_latencies(&plane, &b, &sent).await?;
    let flood_alone = flood(&plane, &a, events).await?;
    drop_database(plane).await?;

    // Together: B's trickle runs for as long as A's flood.
    let plane = TestPlane::start_with(config).await?;
    let (a, b) = (org_with_agent(&plane, "enterprise").await?, org_with_agent(&plane, "starter").await?);
    let stop = tokio_util::sync::CancellationToken::new();
    let sending = {
        let (plane, b, stop) = (&plane, b.clone(), stop.clone());
        async move { trickle(plane, &b, 10, stop).await }
    };
    let flooding = async {
        let throughput = flood(&plane, &a, events).await;
        stop.cancel();
        throughput
    };
    let (sent, flood_beside) = tokio::join!(sending, flooding);
    let (sent, flood_beside) = (sent?, flood_beside?);
    let during = completion_latencies(&plane, &b, &sent).await?;
    drop_database(plane).await?;
    let p99 = |l: &[f64]| percentile(l, 99.0);
    Ok(json!({
        "flood_events": events,
        "trickle_per_sec": 10,
        "b_alone_events": alone.len(),
        "b_alone_p50_ms": percentile(&alone, 50.0),
        "b_alone_p99_ms": p99(&alone),
        "b_during_flood_events": during.len(),
        "b_during_flood_p50_ms": percentile(&during, 50.0),
        "b_during_flood_p99_ms": p99(&during),
        "p99_ratio": p99(&during) / p99(&alone).max(f64::MIN_POSITIVE),
        "flood_alone_executions_per_sec": flood_alone,
        "flood_beside_b_executions_per_sec": flood_beside,
        "flood_throughput_ratio": flood_beside / flood_alone,
    }))
}

/// A process's resident memory now and at its peak, in MiB (`/proc/<pid>/status`).
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (f) Memory of `one-agents serve --services all` (the release binary beside this one): resident
/// memory idle after start, and at its peak after ingesting and running `events` events for the
/// bench's orgs.
async fn memory(events: usize) -> anyhow::Result<Value> {
    let roles = ["gateway", "agents", "catalog", "executions", "approvals", "credits"];
    let plane = TestPlane::start_roles(&roles, |c| {
        c.gateway.rate_limit.enabled = false;
        c.database.max_connections = 40;
    })
    .await?;
    let orgs = setup_orgs(&plane).await?;
    let binary = std::env::current_exe()?.with_file_name("one-agents");
    let mut child = tokio::process::Command::new(&binary)
        .args(["serve", "--services", "all"])
        .envs(oa_testkit::process_env(&plane.config))
        .env("ONE_AGENTS_DATABASE__MAX_CONNECTIONS", "40")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("{} (build it with cargo build --release -p one-agents)", binary.display())
        })?;
    let pid = child.id().context("the child's pid")?;
    plane.publish_on_bus(&event(&orgs[0], 0)).await?;
    wait_for_count(&plane, Some("completed"), AGENTS_PER_ORG as i64, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, _) = rss_mib(pid);
    let client = oa_bus::connect(&plane.config.nats).await?;
    let js = jetstream::new(client);
    let topology = oa_bus::Topology::new(&plane.config.nats);
    let batch: Vec<Envelope> = (0..events).map(|n| event(&orgs[n % orgs.len()], 9_000_000 + n)).collect();
    publish_all(&js, &topology, &batch).await?;
    let expected = ((events + 1) * AGENTS_PER_ORG) as i64;
    wait_for_count(&plane, Some("completed"), expected, Duration::from_secs(900)).await?;
    let (_, peak) = rss_mib(pid);
    child.kill().await?;
    drop_database(plane).await?;
    Ok(
        json!({ "events": events, "executions": events * AGENTS_PER_ORG, "rss_idle_mib": idle, "rss_peak_mib": peak }),
    )
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu, "memory": memory, "commit": commit,
        "measured_at": chrono::Utc::now(),
    })
}

/// The ingest run of a child process: `oa-bench observability on|off`. With `on`, the process
/// installs the plane's telemetry (the `OTEL_*` variables its parent set: the exporter, 10%
/// sampling) and serves metrics; with `off`, neither. It prints the run's JSON on its last line.
async fn observability_child(on: bool, events: usize) -> anyhow::Result<()> {
    let _telemetry = if on {
        let mut telemetry = oa_config::Config::default().telemetry;
        // The default filter (info): it decides which spans exist, and writes few lines here.
        telemetry.log_format = "json".into();
        Some(oa_telemetry::init(&telemetry, "all", "development")?)
    } else {
        None
    };
    let result = ingest(events, on).await?;
    println!("{result}");
    Ok(())
}

/// (d) Observability overhead: ingest with metrics and tracing on (spans exported to a real OTLP
/// receiver, 10% sampled) against both off, each in a process of its own. A first run warms the
/// stack and is not counted; then the pairs alternate their order (off-on, on-off, ...) so that
/// neither side always runs on a stack the other has just loaded.
async fn observability(events: usize) -> anyhow::Result<Value> {
    let receiver = oa_testkit::otlp::Receiver::start().await?;
    let run = |on: bool| {
        let receiver = receiver.addr;
        async move {
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command.args(["observability", if on { "on" } else { "off" }]);
            command.env("OA_BENCH_EVENTS", events.to_string()).stderr(std::process::Stdio::inherit());
            if on {
                command
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
                    .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
                    .env("OTEL_TRACES_SAMPLER_ARG", "0.1");
            }
            let output = command.output().await?;
            anyhow::ensure!(output.status.success(), "the observability {on} run failed");
            let text = String::from_utf8_lossy(&output.stdout);
            let last = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{') && l.contains("events_per_sec"))
                .context("the run's JSON")?;
            let result: Value = serde_json::from_str(last)?;
            let figure = |name: &str| result[name].as_f64().with_context(|| name.to_owned());
            anyhow::Ok((figure("events_per_sec")?, figure("process_cpu_ms_per_event")?))
        }
    };
    run(false).await?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for pair in 0..env_number("OA_BENCH_ALTERNATIONS", 4) {
        for side in if pair.is_multiple_of(2) { [false, true] } else { [true, false] } {
            let figures = run(side).await?;
            if side { on.push(figures) } else { off.push(figures) }
        }
    }
    anyhow::ensure!(!receiver.spans().is_empty(), "tracing was on but the receiver got no span");
    let mean =
        |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| v.iter().map(pick).sum::<f64>() / v.len() as f64;
    let median = |v: &[(f64, f64)]| {
        let mut rates: Vec<f64> = v.iter().map(|f| f.0).collect();
        rates.sort_by(f64::total_cmp);
        let middle = rates.len() / 2;
        if rates.len().is_multiple_of(2) { (rates[middle - 1] + rates[middle]) / 2.0 } else { rates[middle] }
    };
    Ok(json!({
        "events": events,
        "events_per_sec_off": off.iter().map(|f| f.0).collect::<Vec<_>>(),
        "events_per_sec_on": on.iter().map(|f| f.0).collect::<Vec<_>>(),
        "spans_received": receiver.spans().len(),
        "ratio_on_to_off": mean(&on, |f| f.0) / mean(&off, |f| f.0),
        "ratio_on_to_off_by_median": median(&on) / median(&off),
        "process_cpu_ms_per_event_off": mean(&off, |f| f.1),
        "process_cpu_ms_per_event_on": mean(&on, |f| f.1),
        "target_ratio": 0.95,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env_number("OA_BENCH_EVENTS", 5_000);
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("observability") => {
            return observability_child(args.get(2).map(String::as_str) == Some("on"), events).await;
        }
        // Section (d) alone, printed and not written to latest.json: for profiling and comparing.
        Some("overhead") => {
            println!("{:#}", observability(events).await?);
            return Ok(());
        }
        // Single sections, printed and not written to latest.json.
        Some("noisy") => {
            println!("{:#}", noisy_neighbour(env_number("OA_BENCH_FLOOD_EVENTS", 20_000), 10).await?);
            return Ok(());
        }
        Some("memory") => {
            println!("{:#}", memory(events).await?);
            return Ok(());
        }
        Some("ingest") => {
            let raw = raw_limit(events).await?;
            let ingest = ingest(events, true).await?;
            let ratio = ingest["events_per_sec"].as_f64().unwrap_or(0.0)
                / raw["events_per_sec"].as_f64().unwrap_or(1.0);
            println!("{:#}", json!({"raw_limit": raw, "ingest": ingest, "ingest_to_raw_ratio": ratio}));
            return Ok(());
        }
        Some("engine") => {
            println!("{:#}", engine().await?);
            return Ok(());
        }
        Some("metered") => {
            let metered_events = env_number("OA_BENCH_METERED_EVENTS", 1_000);
            let off = metered_throughput(metered_events, false).await?;
            let on = metered_throughput(metered_events, true).await?;
            println!("metering off {off:.1}/s, on {on:.1}/s: ratio {:.3}", on / off);
            return Ok(());
        }
        Some("gateway") => {
            println!("{:#}", gateway::gateway().await?);
            return Ok(());
        }
        _ => {}
    }
    println!("bench: raw limit ({events} events, 10 rows each)");
    let raw = raw_limit(events).await?;
    println!(
        "bench: ingest ({ORGS} orgs x {AGENTS_PER_ORG} agents, {events} events, then {LATENCY_RATE}/s for {LATENCY_SECONDS}s)"
    );
    let ingest = ingest(events, true).await?;
    println!("bench: engine (40 transform steps)");
    let engine = engine().await?;
    let metered_events = env_number("OA_BENCH_METERED_EVENTS", 1_000);
    println!(
        "bench: credits metering ({metered_events} events x {AGENTS_PER_ORG} executions with one quick ai_reason step, off then on)"
    );
    let off = metered_throughput(metered_events, false).await?;
    let on = metered_throughput(metered_events, true).await?;
    let metering = json!({
        "events": metered_events,
        "executions_per_sec_metering_off": off,
        "executions_per_sec_metering_on": on,
        "ratio_on_to_off": on / off,
    });
    println!(
        "bench: observability overhead (ingest with metrics and 10%-sampled tracing on and off, a warm-up, then four pairs in alternating order)"
    );
    let observability = observability(events).await?;
    let flood_events = env_number("OA_BENCH_FLOOD_EVENTS", 20_000);
    println!(
        "bench: noisy neighbour (org B at 10 events/s, alone and while org A floods {flood_events} events)"
    );
    let noisy = noisy_neighbour(flood_events, 10).await?;
    println!("bench: memory (serve --services all, idle and ingesting {events} events)");
    let memory = memory(events).await?;
    println!(
        "bench: gateway reads (GET /api/agents and /api/executions?limit=50 against a raw axum -> tonic -> Postgres read, with oha)"
    );
    let gateway = gateway::gateway().await?;
    let ratio =
        ingest["events_per_sec"].as_f64().unwrap_or(0.0) / raw["events_per_sec"].as_f64().unwrap_or(1.0);
    let results = json!({
        "machine": machine(),
        "ingest": ingest,
        "raw_limit": raw,
        "ingest_to_raw_ratio": ratio,
        "engine": engine,
        "credits_metering": metering,
        "observability": observability,
        "noisy_neighbour": noisy,
        "memory": memory,
        "gateway": gateway,
        "targets": {
            "ingest_to_raw_ratio": 0.8,
            "credits_metering_ratio_on_to_off": 0.9,
            "engine_ms_per_step": 1.0,
            "gateway_ratio_to_raw": 0.8,
            "gateway_p99_ms_at_1000": 10,
            "noisy_neighbour_p99_ratio": 2.0,
            "noisy_neighbour_flood_throughput_ratio": 0.9,
        },
    });
    let text = serde_json::to_string_pretty(&results)?;
    std::fs::create_dir_all("bench/results")?;
    std::fs::write("bench/results/latest.json", &text)?;
    println!("{text}");
    Ok(())
}
