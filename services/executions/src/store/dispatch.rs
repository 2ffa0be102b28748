//! Runnable work (`executions.runnable`): what ingest, decisions and retries queue, and what
//! workers claim under leases in per-org weighted round robin. Queueing happens in the org's own
//! transaction, beside the execution it queues; claims, heartbeats and settling run across orgs
//! in transactions that set `app.dispatcher`.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

/// An execution to queue, with the flow control its agent asks for (keys already rendered).
#[derive(Debug, Clone, Default)]
pub struct Runnable {
    pub execution_id: String,
    pub agent_id: String,
    /// [`oa_domain::agent::Priority::rank`].
    pub priority: i16,
    /// The BUS stream sequence of the event, for executions an event started.
    pub event_seq: Option<i64>,
    pub concurrency: Option<(String, i32)>,
    /// The key and period (ms) of a debounce.
    pub debounce: Option<(String, i64)>,
    /// The key, limit and period (ms) of a throttle.
    pub throttle: Option<(String, i32, i64)>,
    /// The trace context of what queued it.
    pub traceparent: Option<String>,
}

/// Queues `rows` of one org; a row already queued is left as it is (a redelivered event).
pub async fn enqueue(tx: &mut PgConnection, org_id: &str, rows: &[Runnable]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&Runnable) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let ids = column(&|r| Some(r.execution_id.clone()));
    let agents = column(&|r| Some(r.agent_id.clone()));
    let priorities: Vec<i16> = rows.iter().map(|r| r.priority).collect();
    let event_seqs: Vec<Option<i64>> = rows.iter().map(|r| r.event_seq).collect();
    let delays: Vec<i64> = rows.iter().map(|r| r.debounce.as_ref().map_or(0, |(_, ms)| *ms)).collect();
    let reasons = column(&|r| {
        if r.debounce.is_some() {
            Some("debounce".into())
        } else {
            r.concurrency.as_ref().map(|_| "concurrency".into())
        }
    });
    let concurrency_keys = column(&|r| r.concurrency.as_ref().map(|(k, _)| k.clone()));
    let concurrency_limits: Vec<Option<i32>> =
        rows.iter().map(|r| r.concurrency.as_ref().map(|c| c.1)).collect();
    let debounce_keys = column(&|r| r.debounce.as_ref().map(|(k, _)| k.clone()));
    let throttle_keys = column(&|r| r.throttle.as_ref().map(|(k, _, _)| k.clone()));
    let throttle_limits: Vec<Option<i32>> = rows.iter().map(|r| r.throttle.as_ref().map(|t| t.1)).collect();
    let throttle_periods: Vec<Option<i64>> = rows.iter().map(|r| r.throttle.as_ref().map(|t| t.2)).collect();
    let traceparents = column(&|r| r.traceparent.clone());
    sqlx::query(
        "INSERT INTO executions.runnable
             (execution_id, org_id, agent_id, priority, event_seq, not_before, pending_reason,
              concurrency_key, concurrency_limit, debounce_key, throttle_key, throttle_limit, throttle_period_ms,
              traceparent)
         SELECT i, $2, a, p, s, now() + d * interval '1 millisecond', r, ck, cl, dk, tk, tl, tp, t
         FROM unnest($1::text[], $3::text[], $4::smallint[], $5::bigint[], $6::bigint[], $7::text[],
                     $8::text[], $9::int[], $10::text[], $11::text[], $12::int[], $13::bigint[], $14::text[])
              AS u(i, a, p, s, d, r, ck, cl, dk, tk, tl, tp, t)
         ON CONFLICT (execution_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(org_id)
    .bind(&agents)
    .bind(&priorities)
    .bind(&event_seqs)
    .bind(&delays)
    .bind(&reasons)
    .bind(&concurrency_keys)
    .bind(&concurrency_limits)
    .bind(&debounce_keys)
    .bind(&throttle_keys)
    .bind(&throttle_limits)
    .bind(&throttle_periods)
    .bind(&traceparents)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Queues executions that exist already and have not ended (resumed by a decision, retried, or
/// started by a schedule), at their agent's priority and without flow control: a resumed
/// execution had its turn. One a run holds now is marked to run again when that run stops (the
/// decision may have landed after the run looked at its gate). Returns how many were queued.
pub async fn enqueue_existing(
    tx: &mut PgConnection,
    org_id: &str,
    ids: &[String],
    traceparent: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let queued = sqlx::query(
        "INSERT INTO executions.runnable (execution_id, org_id, agent_id, priority, traceparent)
         SELECT id, org_id, agent_id,
                CASE definition->>'priority' WHEN 'high' THEN 0 WHEN 'low' THEN 2 ELSE 1 END, $3
         FROM executions.executions
         WHERE org_id = $1 AND id = ANY($2) AND status IN ('pending', 'running', 'waiting_approval')
         ON CONFLICT (execution_id) DO UPDATE SET rerun = true, traceparent = COALESCE($3, runnable.traceparent)
             WHERE runnable.lease_owner IS NOT NULL",
    )
    .bind(org_id)
    .bind(ids)
    .bind(traceparent)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(queued)
}

/// Serializes the transactions that touch one flow-control key until they end.
async fn lock_key(
    tx: &mut PgConnection,
    kind: &str,
    org_id: &str,
    agent_id: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || $3 || '/' || $4, 19))",
    )
    .bind(kind)
    .bind(org_id)
    .bind(agent_id)
    .bind(key)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Debounces a new execution (already inserted, not yet queued) against the executions of the
/// same agent and key still waiting out their period: of them all, the one whose event came last
/// on the bus stays, and the others are cancelled as superseded by it. Returns the execution that
/// supersedes the new one, if one does (then it must not be queued).
pub async fn debounce(
    tx: &mut PgConnection,
    org_id: &str,
    new: &Runnable,
    key: &str,
) -> Result<Option<String>, sqlx::Error> {
    lock_key(tx, "debounce", org_id, &new.agent_id, key).await?;
    let waiting: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT execution_id, event_seq FROM executions.runnable
         WHERE org_id = $1 AND agent_id = $2 AND debounce_key = $3 AND lease_owner IS NULL
           AND execution_id <> $4
         FOR UPDATE",
    )
    .bind(org_id)
    .bind(&new.agent_id)
    .bind(key)
    .bind(&new.execution_id)
    .fetch_all(&mut *tx)
    .await?;
    let latest = waiting
        .iter()
        .map(|(id, seq)| (seq.unwrap_or_default(), id.as_str()))
        .chain([(new.event_seq.unwrap_or_default(), new.execution_id.as_str())])
        .max()
        .map(|(_, id)| id.to_owned())
        .unwrap_or_default();
    for (id, _) in waiting.iter().filter(|(id, _)| *id != latest) {
        sqlx::query("DELETE FROM executions.runnable WHERE execution_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        supersede(tx, org_id, id, &latest).await?;
    }
    if latest == new.execution_id {
        return Ok(None);
    }
    supersede(tx, org_id, &new.execution_id, &latest).await?;
    Ok(Some(latest))
}

/// Cancels a pending execution as superseded by `by`; those it superseded now name `by` too, the
/// execution that runs for them all.
async fn supersede(tx: &mut PgConnection, org_id: &str, id: &str, by: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE executions.executions SET superseded_by = $3 WHERE org_id = $1 AND superseded_by = $2",
    )
    .bind(org_id)
    .bind(id)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    let error = serde_json::json!({
        "code": "superseded",
        "message": "debounced: a later event for the same key replaced this execution (superseded_by names the one that runs)",
    });
    sqlx::query(
        "UPDATE executions.executions
         SET status = 'cancelled', superseded_by = $2, error = $3, completed_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(by)
    .bind(Json(error))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Opens a transaction that works across orgs on runnable work.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    // One round trip: BEGIN and the setting in one simple query.
    pool.begin_with("BEGIN; SELECT set_config('app.dispatcher', 'on', true)").await
}

/// Frees the leases of workers that stopped renewing them; each counts as a failed delivery, so
/// an execution that kills its workers is given up after `max_deliveries`. Returns how many.
pub async fn expire_leases(tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE executions.runnable
         SET lease_owner = NULL, lease_until = NULL, failures = failures + 1,
             last_error = 'the worker running it stopped renewing its lease'
         WHERE lease_owner IS NOT NULL AND lease_until < now()",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// The orgs with unleased work, found by a loose index scan (one probe per org, however deep
/// each org's queue is).
pub async fn orgs_waiting(tx: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE orgs(org_id) AS (
             (SELECT org_id FROM executions.runnable WHERE lease_owner IS NULL ORDER BY org_id LIMIT 1)
             UNION ALL
             SELECT (SELECT r.org_id FROM executions.runnable r
                     WHERE r.lease_owner IS NULL AND r.org_id > orgs.org_id ORDER BY r.org_id LIMIT 1)
             FROM orgs WHERE orgs.org_id IS NOT NULL
         )
         SELECT org_id FROM orgs WHERE org_id IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await
}

/// Executions running now, per org, across all workers.
pub async fn running_by_org(tx: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, count(*) FROM executions.runnable WHERE lease_owner IS NOT NULL GROUP BY org_id",
    )
    .fetch_all(&mut *tx)
    .await
}

/// A claimed execution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub execution_id: String,
    pub org_id: String,
    pub agent_id: String,
    pub failures: i32,
    pub last_error: Option<String>,
    pub throttle_key: Option<String>,
    pub throttle_limit: Option<i32>,
    pub throttle_period_ms: Option<i64>,
    pub traceparent: Option<String>,
}

/// Leases executions to `owner`, up to the count `plan` gives each org: by priority and queue
/// order, those past their `not_before`, and of executions sharing a concurrency key only as many
/// as the key has free places, the earliest events first (and only once they have settled
/// `settle_ms`, so events ingested side by side are all queued). Looks at no more than `window` of
/// each org's queue. An org another worker is claiming for at this moment is skipped (its claim
/// lock keeps two claims from overrunning the org's cap).
pub async fn claim(
    tx: &mut PgConnection,
    plan: &[(String, i64)],
    owner: &str,
    lease_ms: i64,
    settle_ms: i64,
    window: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let orgs: Vec<&str> = plan.iter().map(|(org, _)| org.as_str()).collect();
    let counts: Vec<i64> = plan.iter().map(|(_, count)| *count).collect();
    sqlx::query_as(
        "WITH plan AS MATERIALIZED (
             SELECT o AS org_id, n FROM unnest($1::text[], $2::bigint[]) AS p(o, n)
             WHERE pg_try_advisory_xact_lock(hashtextextended('dispatch/' || o, 19))
         ),
         ready AS (
             SELECT c.execution_id FROM plan p CROSS JOIN LATERAL (
                 SELECT h.execution_id FROM (
                     SELECT * FROM executions.runnable
                     WHERE org_id = p.org_id AND lease_owner IS NULL AND not_before <= now()
                     ORDER BY priority, seq LIMIT $6
                 ) h
                 WHERE h.concurrency_key IS NULL
                    OR (h.enqueued_at <= now() - $5 * interval '1 millisecond'
                        AND (SELECT count(*) FROM (
                                SELECT 1 FROM executions.runnable k
                                WHERE k.org_id = h.org_id AND k.agent_id = h.agent_id
                                  AND k.concurrency_key = h.concurrency_key
                                  AND (k.lease_owner IS NOT NULL
                                       OR (COALESCE(k.event_seq, 0), k.seq) < (COALESCE(h.event_seq, 0), h.seq))
                                LIMIT h.concurrency_limit) ahead) < h.concurrency_limit)
                 ORDER BY h.priority, h.seq LIMIT p.n
             ) c
         ),
         -- Rows are found again by their key (`= ANY` of an array), never by a join the planner
         -- may run as a scan of the whole queue: a flood's queue is long.
         locked AS (
             SELECT r.execution_id FROM executions.runnable r
             WHERE r.execution_id = ANY (ARRAY(SELECT execution_id FROM ready)) AND r.lease_owner IS NULL
             FOR UPDATE OF r SKIP LOCKED
         )
         UPDATE executions.runnable r
         SET lease_owner = $3, lease_until = now() + $4 * interval '1 millisecond', pending_reason = NULL,
             rerun = false
         WHERE r.execution_id = ANY (ARRAY(SELECT execution_id FROM locked))
         RETURNING r.execution_id, r.org_id, r.agent_id, r.failures, r.last_error,
                   r.throttle_key, r.throttle_limit, r.throttle_period_ms, r.traceparent",
    )
    .bind(&orgs)
    .bind(&counts)
    .bind(owner)
    .bind(lease_ms)
    .bind(settle_ms)
    .bind(window)
    .fetch_all(&mut *tx)
    .await
}

/// Admits a claimed throttled execution when fewer than its limit started within its period, and
/// counts its start; otherwise hands it back to wait for the next free place. Returns whether it
/// was admitted.
pub async fn admit_throttled(tx: &mut PgConnection, claimed: &Claimed) -> Result<bool, sqlx::Error> {
    let (Some(key), Some(limit), Some(period_ms)) =
        (&claimed.throttle_key, claimed.throttle_limit, claimed.throttle_period_ms)
    else {
        return Ok(true);
    };
    lock_key(tx, "throttle", &claimed.org_id, &claimed.agent_id, key).await?;
    sqlx::query(
        "DELETE FROM executions.throttle_starts
         WHERE org_id = $1 AND agent_id = $2 AND key = $3 AND started_at <= now() - $4 * interval '1 millisecond'",
    )
    .bind(&claimed.org_id)
    .bind(&claimed.agent_id)
    .bind(key)
    .bind(period_ms)
    .execute(&mut *tx)
    .await?;
    let starts: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT started_at FROM executions.throttle_starts
         WHERE org_id = $1 AND agent_id = $2 AND key = $3 ORDER BY started_at",
    )
    .bind(&claimed.org_id)
    .bind(&claimed.agent_id)
    .bind(key)
    .fetch_all(&mut *tx)
    .await?;
    if starts.len() < limit as usize {
        sqlx::query(
            "INSERT INTO executions.throttle_starts (org_id, agent_id, key, started_at) VALUES ($1, $2, $3, clock_timestamp())",
        )
        .bind(&claimed.org_id)
        .bind(&claimed.agent_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        return Ok(true);
    }
    // The next place frees when the oldest start in the window leaves it.
    let free_at = starts[starts.len() - limit as usize] + chrono::Duration::milliseconds(period_ms);
    sqlx::query(
        "UPDATE executions.runnable
         SET lease_owner = NULL, lease_until = NULL, not_before = $2, pending_reason = 'throttle'
         WHERE execution_id = $1",
    )
    .bind(&claimed.execution_id)
    .bind(free_at)
    .execute(&mut *tx)
    .await?;
    Ok(false)
}

/// Renews `owner`'s leases on `ids`.
pub async fn renew(pool: &PgPool, owner: &str, ids: &[String], lease_ms: i64) -> Result<(), sqlx::Error> {
    let mut tx = begin(pool).await?;
    sqlx::query(
        "UPDATE executions.runnable SET lease_until = now() + $3 * interval '1 millisecond'
         WHERE lease_owner = $1 AND execution_id = ANY($2)",
    )
    .bind(owner)
    .bind(ids)
    .bind(lease_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Removes the work of runs that stopped (the execution ended or waits for a human), while
/// `owner` still holds it; work queued again meanwhile is handed back to run once more.
pub async fn done(pool: &PgPool, owner: &str, ids: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = begin(pool).await?;
    // Two statements, the delete first: a decision queueing the work again at this moment holds
    // the row; the delete then re-checks it, sees `rerun` and leaves it, and the update (a fresh
    // snapshot) hands it back. One statement would see neither.
    sqlx::query(
        "DELETE FROM executions.runnable WHERE execution_id = ANY($1) AND lease_owner = $2 AND NOT rerun",
    )
    .bind(ids)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE executions.runnable SET lease_owner = NULL, lease_until = NULL, rerun = false
         WHERE execution_id = ANY($1) AND lease_owner = $2 AND rerun",
    )
    .bind(ids)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Hands claimed work back to the queue after `delay_ms`; `failure` counts a failed run with its
/// error (an outage or a drain counts nothing).
pub async fn release(
    pool: &PgPool,
    owner: &str,
    ids: &[String],
    delay_ms: i64,
    failure: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = begin(pool).await?;
    sqlx::query(
        "UPDATE executions.runnable
         SET lease_owner = NULL, lease_until = NULL, not_before = now() + $3 * interval '1 millisecond',
             pending_reason = CASE WHEN $4::text IS NULL THEN pending_reason ELSE 'retry_backoff' END,
             failures = failures + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END,
             last_error = COALESCE($4, last_error)
         WHERE lease_owner = $1 AND execution_id = ANY($2)",
    )
    .bind(owner)
    .bind(ids)
    .bind(delay_ms)
    .bind(failure)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The work across orgs: waiting and due (queued, or behind a concurrency key), waiting for a
/// time (a debounce or throttle period, a retry's backoff), and running; for the backlog gauges
/// and autoscaling.
pub async fn backlog(pool: &PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    let mut tx = begin(pool).await?;
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE lease_owner IS NULL AND not_before <= now()),
                count(*) FILTER (WHERE lease_owner IS NULL AND not_before > now()),
                count(*) FILTER (WHERE lease_owner IS NOT NULL)
         FROM executions.runnable",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counts)
}

/// Forgets throttle starts older than a day (a key's own claims forget theirs as they go).
pub async fn prune_throttle_starts(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = begin(pool).await?;
    let pruned =
        sqlx::query("DELETE FROM executions.throttle_starts WHERE started_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok(pruned)
}

/// Drops the work of executions that ended (a cancel): a run would find nothing to do.
pub async fn forget(tx: &mut PgConnection, ids: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM executions.runnable WHERE execution_id = ANY($1) AND lease_owner IS NULL")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
