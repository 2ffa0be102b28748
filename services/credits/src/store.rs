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

async fn ensure_month(
    tx: &mut PgConnection,
    org_id: &str,
    month: &str,
    allocation: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credits.balances (org_id, month, allocation) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(org_id)
    .bind(month)
    .bind(allocation)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
    ensure_month(tx, request.org_id, &month, allocation).await?;
    let remaining: Option<i64> = sqlx::query_scalar(
        "UPDATE credits.balances SET reserved = reserved + $3, updated_at = now()
         WHERE org_id = $1 AND month = $2 AND used + reserved + $3 <= allocation
         RETURNING allocation - used - reserved",
    )
    .bind(request.org_id)
    .bind(&month)
    .bind(request.amount)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(remaining) = remaining else {
        let left: i64 = sqlx::query_scalar(
            "SELECT allocation - used - reserved FROM credits.balances WHERE org_id = $1 AND month = $2",
        )
        .bind(request.org_id)
        .bind(&month)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Reserved::Insufficient { remaining: left });
    };
    let id = ids::new_id("rsv");
    let inserted = sqlx::query(
        "INSERT INTO credits.reservations
             (id, org_id, month, idempotency_key, amount, status, execution_id, step_id, agent_id, model_tier)
         VALUES ($1, $2, $3, $4, $5, 'reserved', $6, $7, $8, $9)
         ON CONFLICT (org_id, idempotency_key) DO NOTHING",
    )
    .bind(&id)
    .bind(request.org_id)
    .bind(&month)
    .bind(request.idempotency_key)
    .bind(request.amount)
    .bind(request.execution_id)
    .bind(request.step_id)
    .bind(request.agent_id)
    .bind(request.model_tier)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Reserved::Raced);
    }
    ledger(tx, &id, "reserve", request.amount).await?;
    Ok(Reserved::New(Reservation {
        id,
        amount: request.amount,
        status: ReservationStatus::Reserved,
        remaining,
    }))
}

async fn ledger(
    tx: &mut PgConnection,
    reservation_id: &str,
    kind: &str,
    amount: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credits.ledger (org_id, month, kind, amount, reservation_id, execution_id, step_id, agent_id, model_tier)
         SELECT org_id, month, $2, $3, id, execution_id, step_id, agent_id, model_tier FROM credits.reservations WHERE id = $1",
    )
    .bind(reservation_id)
    .bind(kind)
    .bind(amount)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
    let row = sqlx::query("SELECT month, amount, status, agent_id, model_tier FROM credits.reservations WHERE id = $1 AND org_id = $2 FOR UPDATE")
        .bind(reservation_id)
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(Err(format!("reservation {reservation_id} not found"))) };
    let (month, amount, status): (String, i64, String) =
        (row.try_get("month")?, row.try_get("amount")?, row.try_get("status")?);
    if status != "reserved" {
        return Ok(Ok(()));
    }
    let spent = commit.unwrap_or(0);
    if spent < 0 || spent > amount {
        return Ok(Err(format!("a commit is between 0 and the {amount} credits reserved")));
    }
    sqlx::query(
        "UPDATE credits.reservations SET status = $2, committed_amount = $3, settled_at = now() WHERE id = $1",
    )
    .bind(reservation_id)
    .bind(if commit.is_some() { "committed" } else { "released" })
    .bind(commit)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE credits.balances SET reserved = reserved - $3, used = used + $4, updated_at = now()
         WHERE org_id = $1 AND month = $2",
    )
    .bind(org_id)
    .bind(&month)
    .bind(amount)
    .bind(spent)
    .execute(&mut *tx)
    .await?;
    if let Some(spent) = commit {
        sqlx::query(
            "INSERT INTO credits.usage (org_id, month, agent_id, model_tier, amount) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id, month, agent_id, model_tier) DO UPDATE SET amount = credits.usage.amount + EXCLUDED.amount",
        )
        .bind(org_id)
        .bind(&month)
        .bind(row.try_get::<String, _>("agent_id")?)
        .bind(row.try_get::<String, _>("model_tier")?)
        .bind(spent)
        .execute(&mut *tx)
        .await?;
        ledger(tx, reservation_id, "commit", spent).await?;
    } else {
        ledger(tx, reservation_id, "release", amount).await?;
    }
    Ok(Ok(()))
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
