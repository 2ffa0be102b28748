//! Queries on schema `credits`. A reservation moves credits from `allocation` to `reserved` with
//! one conditional UPDATE of the org's month row, so concurrent reservations of one org queue on
//! that row only and other orgs are not touched; the table's CHECKs forbid any overdraw.

use chrono::{Datelike, Utc};
use oa_config::TiersConfig;
use oa_domain::ids;
use oa_domain::status::ReservationStatus;
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, Row};
use strum::VariantNames;

/// The calendar month (UTC) of now, as `YYYY-MM`.
pub fn current_month() -> String {
    Utc::now().format("%Y-%m").to_string()
}

/// The `count` months ending with `month`, newest first.
pub fn months_back(month: &str, count: usize) -> Vec<String> {
    let (year, mon) = month
        .split_once('-')
        .and_then(|(y, m)| Some((y.parse::<i32>().ok()?, m.parse::<i32>().ok()?)))
        .unwrap_or_else(|| {
            let now = Utc::now();
            (now.year(), now.month() as i32)
        });
    let index = year * 12 + (mon - 1);
    (0..count as i32).map(|k| format!("{:04}-{:02}", (index - k) / 12, (index - k) % 12 + 1)).collect()
}

/// Sets an org's tier and override; the current month's allocation follows (never below what is
/// already spent or held).
pub async fn set_plan(
    tx: &mut PgConnection,
    org_id: &str,
    tier: &str,
    monthly_override: Option<i64>,
    new_allocation: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credits.org_plans (org_id, tier, monthly_override) VALUES ($1, $2, $3)
         ON CONFLICT (org_id) DO UPDATE SET tier = EXCLUDED.tier, monthly_override = EXCLUDED.monthly_override, updated_at = now()",
    )
    .bind(org_id)
    .bind(tier)
    .bind(monthly_override)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE credits.balances SET allocation = GREATEST($3, used + reserved), updated_at = now()
         WHERE org_id = $1 AND month = $2",
    )
    .bind(org_id)
    .bind(current_month())
    .bind(new_allocation)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The org's monthly allocation: its override, else its tier's, else the starter tier's.
pub async fn allocation(
    tx: &mut PgConnection,
    org_id: &str,
    tiers: &TiersConfig,
    caller_tier: &str,
) -> Result<i64, sqlx::Error> {
    let plan = sqlx::query("SELECT tier, monthly_override FROM credits.org_plans WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
    let (tier, monthly_override): (String, Option<i64>) = match plan {
        Some(row) => (row.try_get("tier")?, row.try_get("monthly_override")?),
        None => (caller_tier.to_owned(), None),
    };
    Ok(monthly_override.unwrap_or_else(|| tiers.get(&tier).unwrap_or(&tiers.starter).monthly_credits))
}

pub struct ReserveRequest<'a> {
    pub org_id: &'a str,
    pub idempotency_key: &'a str,
    pub amount: i64,
    pub execution_id: &'a str,
    pub step_id: &'a str,
    pub agent_id: &'a str,
    pub model_tier: &'a str,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Reservation {
    pub id: String,
    pub amount: i64,
    #[sqlx(try_from = "String")]
    pub status: ReservationStatus,
    pub remaining: i64,
}

async fn existing(
    tx: &mut PgConnection,
    org_id: &str,
    key: &str,
) -> Result<Option<Reservation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.amount, r.status, b.allocation - b.used - b.reserved AS remaining
         FROM credits.reservations r JOIN credits.balances b ON b.org_id = r.org_id AND b.month = r.month
         WHERE r.org_id = $1 AND r.idempotency_key = $2",
    )
    .bind(org_id)
    .bind(key)
    .fetch_optional(&mut *tx)
    .await
}

/// The outcome of a reservation attempt inside the caller's transaction.
pub enum Reserved {
    New(Reservation),
    /// This key was reserved before: the same reservation, charged once.
    Existing(Reservation),
    /// Too little left; nothing changed.
    Insufficient {
        remaining: i64,
    },
    /// Another transaction reserved the same key at the same time: roll back and read it.
    Raced,
}

pub async fn reserve(
    tx: &mut PgConnection,
    request: &ReserveRequest<'_>,
    allocation: i64,
) -> Result<Reserved, sqlx::Error> {
    if let Some(found) = existing(tx, request.org_id, request.idempotency_key).await? {
        return Ok(Reserved::Existing(found));
    }
    let month = current_month();
    let id = ids::new_id("rsv");
    // One statement takes the amount from the month's balance (opening the month if need be),
    // records the reservation and books it in the ledger; nothing when too little is left.
    let (remaining, inserted): (Option<i64>, i64) = sqlx::query_as(
        "WITH balance AS (
             INSERT INTO credits.balances AS b (org_id, month, allocation, reserved)
             SELECT $1, $2, $3, $4 WHERE $4 <= $3
             ON CONFLICT (org_id, month) DO UPDATE SET reserved = b.reserved + EXCLUDED.reserved, updated_at = now()
                 WHERE b.used + b.reserved + EXCLUDED.reserved <= b.allocation
             RETURNING b.allocation - b.used - b.reserved AS remaining
         ), reservation AS (
             INSERT INTO credits.reservations
                 (id, org_id, month, idempotency_key, amount, status, execution_id, step_id, agent_id, model_tier)
             SELECT $5, $1, $2, $6, $4, 'reserved', $7, $8, $9, $10 FROM balance
             ON CONFLICT (org_id, idempotency_key) DO NOTHING
             RETURNING id, org_id, month, amount, execution_id, step_id, agent_id, model_tier
         ), booked AS (
             INSERT INTO credits.ledger (org_id, month, kind, amount, reservation_id, execution_id, step_id, agent_id, model_tier)
             SELECT org_id, month, 'reserve', amount, id, execution_id, step_id, agent_id, model_tier FROM reservation
         )
         SELECT (SELECT remaining FROM balance), (SELECT count(*) FROM reservation)",
    )
    .bind(request.org_id)
    .bind(&month)
    .bind(allocation)
    .bind(request.amount)
    .bind(&id)
    .bind(request.idempotency_key)
    .bind(request.execution_id)
    .bind(request.step_id)
    .bind(request.agent_id)
    .bind(request.model_tier)
    .fetch_one(&mut *tx)
    .await?;
    let Some(remaining) = remaining else {
        let left: Option<i64> = sqlx::query_scalar(
            "SELECT allocation - used - reserved FROM credits.balances WHERE org_id = $1 AND month = $2",
        )
        .bind(request.org_id)
        .bind(&month)
        .fetch_optional(&mut *tx)
        .await?;
        return Ok(Reserved::Insufficient { remaining: left.unwrap_or(allocation) });
    };
    // Another reservation of this key won the race: the caller's transaction rolls back.
    if inserted == 0 {
        return Ok(Reserved::Raced);
    }
    Ok(Reserved::New(Reservation {
        id,
        amount: request.amount,
        status: ReservationStatus::Reserved,
        remaining,
    }))
}

/// Settles a reservation: `Some(amount)` commits that much (at most what was reserved), `None`
/// releases it. Settling a settled reservation again changes nothing. Returns false when the org
/// has no such reservation.
pub async fn settle(
    tx: &mut PgConnection,
    org_id: &str,
    reservation_id: &str,
    commit: Option<i64>,
) -> Result<Result<(), String>, sqlx::Error> {
    // One statement settles an open reservation: its row, the month's balance, the usage by agent
    // and model, and the ledger. A concurrent settle waits on the reservation's row, then finds
    // it settled and changes nothing.
    let settled: i64 = sqlx::query_scalar(
        "WITH r AS (
             UPDATE credits.reservations
             SET status = CASE WHEN $3::bigint IS NULL THEN 'released' ELSE 'committed' END,
                 committed_amount = $3, settled_at = now()
             WHERE id = $1 AND org_id = $2 AND status = 'reserved' AND ($3::bigint IS NULL OR $3 BETWEEN 0 AND amount)
             RETURNING id, org_id, month, amount, execution_id, step_id, agent_id, model_tier
         ), spent AS (
             UPDATE credits.balances b SET reserved = b.reserved - r.amount, used = b.used + COALESCE($3, 0),
                                           updated_at = now()
             FROM r WHERE b.org_id = r.org_id AND b.month = r.month
         ), by_agent AS (
             INSERT INTO credits.usage (org_id, month, agent_id, model_tier, amount)
             SELECT org_id, month, agent_id, model_tier, $3 FROM r WHERE $3::bigint IS NOT NULL
             ON CONFLICT (org_id, month, agent_id, model_tier) DO UPDATE SET amount = credits.usage.amount + EXCLUDED.amount
         ), booked AS (
             INSERT INTO credits.ledger (org_id, month, kind, amount, reservation_id, execution_id, step_id, agent_id, model_tier)
             SELECT org_id, month, CASE WHEN $3::bigint IS NULL THEN 'release' ELSE 'commit' END, COALESCE($3, amount),
                    id, execution_id, step_id, agent_id, model_tier
             FROM r
         )
         SELECT count(*) FROM r",
    )
    .bind(reservation_id)
    .bind(org_id)
    .bind(commit)
    .fetch_one(&mut *tx)
    .await?;
    if settled == 1 {
        return Ok(Ok(()));
    }
    // Nothing settled: say why (settling a settled reservation again is no error).
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT amount, status FROM credits.reservations WHERE id = $1 AND org_id = $2")
            .bind(reservation_id)
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(match row {
        None => Err(format!("reservation {reservation_id} not found")),
        Some((amount, status)) if status == "reserved" => {
            Err(format!("a commit is between 0 and the {amount} credits reserved"))
        }
        Some(_) => Ok(()),
    })
}

#[derive(sqlx::FromRow)]
pub struct StaleReservation {
    pub id: String,
    pub org_id: String,
    pub execution_id: String,
    pub step_id: String,
    pub amount: i64,
}

/// Open reservations older than `older_than_seconds`, across orgs (the sweeper's policy).
pub async fn stale_reservations(
    tx: &mut PgConnection,
    older_than_seconds: i64,
    limit: i64,
) -> Result<Vec<StaleReservation>, sqlx::Error> {
    sqlx::query("SELECT set_config('app.sweeper', 'on', true)").execute(&mut *tx).await?;
    sqlx::query_as(
        "SELECT id, org_id, execution_id, step_id, amount FROM credits.reservations
         WHERE status = 'reserved' AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2",
    )
    .bind(older_than_seconds as f64)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
}

/// `GET /api/credits` for one month.
pub async fn usage(
    tx: &mut PgConnection,
    org_id: &str,
    month: &str,
    allocation: i64,
) -> Result<Value, sqlx::Error> {
    let balance = sqlx::query("SELECT allocation, used, reserved, updated_at FROM credits.balances WHERE org_id = $1 AND month = $2")
        .bind(org_id)
        .bind(month)
        .fetch_optional(&mut *tx)
        .await?;
    let (allocation, used, reserved, updated_at) = match balance {
        Some(row) => (
            row.try_get::<i64, _>("allocation")?,
            row.try_get::<i64, _>("used")?,
            row.try_get::<i64, _>("reserved")?,
            Some(row.try_get::<chrono::DateTime<Utc>, _>("updated_at")?),
        ),
        None => (allocation, 0, 0, None),
    };
    let rows = sqlx::query(
        "SELECT agent_id, model_tier, amount FROM credits.usage WHERE org_id = $1 AND month = $2",
    )
    .bind(org_id)
    .bind(month)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_agent = Map::new();
    let mut by_model: Map<String, Value> =
        oa_domain::status::ModelTier::VARIANTS.iter().map(|t| ((*t).to_owned(), json!(0))).collect();
    for row in rows {
        let amount: i64 = row.try_get("amount")?;
        let agent: String = row.try_get("agent_id")?;
        let tier: String = row.try_get("model_tier")?;
        let add = |map: &mut Map<String, Value>, key: String| {
            let total = map.get(&key).and_then(Value::as_i64).unwrap_or(0) + amount;
            map.insert(key, json!(total));
        };
        add(&mut by_agent, agent);
        add(&mut by_model, tier);
    }
    Ok(json!({
        "org_id": org_id,
        "month": month,
        "total_used": used,
        "allocation": allocation,
        "remaining": allocation - used - reserved,
        "by_agent": by_agent,
        "by_model": by_model,
        "updated_at": updated_at.unwrap_or_else(Utc::now),
    }))
}

/// `GET /api/credits/history`: the past 12 months, newest first, months without use included.
pub async fn history(tx: &mut PgConnection, org_id: &str, allocation: i64) -> Result<Value, sqlx::Error> {
    let months = months_back(&current_month(), 12);
    let rows = sqlx::query(
        "SELECT month, used, allocation FROM credits.balances WHERE org_id = $1 AND month = ANY($2)",
    )
    .bind(org_id)
    .bind(&months)
    .fetch_all(&mut *tx)
    .await?;
    let mut known = std::collections::HashMap::new();
    for row in rows {
        known.insert(
            row.try_get::<String, _>("month")?,
            (row.try_get::<i64, _>("used")?, row.try_get::<i64, _>("allocation")?),
        );
    }
    let history: Vec<Value> = months
        .iter()
        .map(|month| {
            let (used, month_allocation) = known.get(month).copied().unwrap_or((0, allocation));
            json!({"month": month, "total_used": used, "allocation": month_allocation})
        })
        .collect();
    Ok(json!({ "history": history }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_go_back_across_years() {
        assert_eq!(months_back("2026-02", 3), vec!["2026-02", "2026-01", "2025-12"]);
        assert_eq!(months_back("2026-12", 12).last().unwrap(), "2026-01");
    }
}
