//! The dispatcher: takes runnable executions from Postgres (`executions.runnable`) and runs them,
//! fairly between orgs.
//!
//! - **Between orgs**, free run slots go out in weighted round robin (stride scheduling): each org
//!   with work waiting has a pass that grows by `1 / weight` for each execution it is given, and
//!   the next slot goes to the lowest pass. An org that starts waiting joins at the lowest pass of
//!   those already waiting, so it neither starves them nor waits behind a flood. Weights come
//!   from the org's tier, or the operator's override (`one-agents orgs dispatch`).
//! - **Per org**, no more than its cap run at once across all workers, and its high-priority
//!   agents' work is taken before normal, normal before low.
//! - **Claims** are leases (`FOR UPDATE SKIP LOCKED`), renewed while the run goes on. A worker that
//!   dies stops renewing; its leases expire and another worker resumes the executions from their
//!   last persisted step. On drain the worker finishes what it runs and hands back what is left.
//!
//! Flow control (concurrency keys, throttles, debounce) is applied by the claim query itself and
//! at queueing: see `oa_executions::store::dispatch`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oa_bus::WorkItem;
use oa_executions::store::dispatch::{self, Claimed};
use oa_store::Fault;
use oa_telemetry::metrics;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::{fault_of, max_deliveries_reason};
use crate::engine::Engine;

/// How often the backlog gauges are read.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);
/// How long an org's weight and cap are cached.
const LIMITS_TTL: Duration = Duration::from_secs(5);
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// How long a busy dispatcher lets slots free before its next round.
const COALESCE: Duration = Duration::from_millis(2);
/// How often leases are checked for expiry.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// The most finished runs one flush removes.
const FLUSH_BATCH: usize = 256;
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// An org's share of the workers and its cap on running executions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrgLimits {
    pub weight: f64,
    pub max_running: i64,
}

pub struct Dispatcher {
    pub pool: PgPool,
    /// This worker's name on its leases.
    pub owner: String,
    pub config: oa_config::DispatchConfig,
    pub tiers: oa_config::TiersConfig,
    pub max_deliveries: u64,
    pub redelivery_delay: Duration,
    /// Executions this worker runs at once.
    pub slots: usize,
    /// Told when work may be waiting: new work was queued, or a run ended.
    pub wake: Arc<Notify>,
    held: Mutex<HashSet<String>>,
    limits: moka::sync::Cache<String, OrgLimits>,
    /// Runs that stopped, whose work the flusher removes in batches.
    finished: tokio::sync::mpsc::UnboundedSender<String>,
    finished_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// When leases were last checked for expiry.
    expiry_checked: Mutex<Option<std::time::Instant>>,
}

impl Dispatcher {
    pub fn new(pool: PgPool, config: &oa_config::Config, wake: Arc<Notify>) -> Dispatcher {
        let (finished, finished_rx) = tokio::sync::mpsc::unbounded_channel();
        Dispatcher {
            finished,
            finished_rx: Mutex::new(Some(finished_rx)),
            expiry_checked: Mutex::new(None),
            pool,
            owner: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                ulid::Ulid::new().to_string().to_lowercase()
            ),
            config: config.dispatch.clone(),
            tiers: config.tiers.clone(),
            max_deliveries: config.nats.max_deliveries,
            redelivery_delay: Duration::from_millis(config.nats.redelivery_delay_ms),
            slots: if config.nats.work_concurrency == 0 { 0 } else { config.dispatch.runs_per_worker.max(1) },
            wake,
            held: Mutex::new(HashSet::new()),
            limits: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(LIMITS_TTL).build(),
        }
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease().as_millis() as i64
    }

    /// Claims and runs work until `shutdown`, then lets the runs in hand finish; at `hand_back`
    /// those still running are cut off and handed back for another worker.
    pub async fn run(
        self: Arc<Self>,
        engine: Arc<Engine>,
        shutdown: CancellationToken,
        hand_back: CancellationToken,
    ) {
        if self.slots == 0 {
            return;
        }
        let slots = Arc::new(Semaphore::new(self.slots));
        let ended = CancellationToken::new();
        let renewing = tokio::spawn(self.clone().renew_leases(ended.clone()));
        let flushing = self
            .finished_rx
            .lock()
            .expect("finished runs")
            .take()
            .map(|rx| tokio::spawn(self.clone().flush_finished(rx, ended.clone())));
        let observing = tokio::spawn(self.clone().observe_backlog(ended.clone()));
        let mut passes: HashMap<String, f64> = HashMap::new();
        let mut runs = JoinSet::new();
        let mut pause = FIRST_PAUSE;
        while !shutdown.is_cancelled() {
            while runs.try_join_next().is_some() {}
            let free = slots.available_permits();
            let claimed = if free == 0 { Ok(Vec::new()) } else { self.round(&mut passes, free).await };
            let claimed = match claimed {
                Ok(claimed) => {
                    pause = FIRST_PAUSE;
                    claimed
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot claim work; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                    continue;
                }
            };
            let full = !claimed.is_empty() && claimed.len() >= free;
            for claim in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (dispatcher, engine, hand_back) = (self.clone(), engine.clone(), hand_back.clone());
                runs.spawn(async move {
                    dispatcher.run_claimed(&engine, claim, &hand_back).await;
                    drop(permit);
                    dispatcher.wake.notify_one();
                });
            }
            if full {
                // Every slot was filled: wait for one to free.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                }
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(self.config.poll_ms.max(10))) => {}
                }
            }
            // Busy: let a few more slots free before the next round, so that one round claims
            // several executions rather than one.
            if slots.available_permits() < self.slots.div_ceil(2) {
                tokio::time::sleep(COALESCE).await;
            }
        }
        while runs.join_next().await.is_some() {}
        ended.cancel();
        let _ = renewing.await;
        // The flusher ends once it has flushed what the runs sent.
        if let Some(flushing) = flushing {
            let _ = tokio::time::timeout(Duration::from_secs(2), flushing).await;
        }
        observing.abort();
    }

    /// One dispatch round: frees expired leases, then shares `free` slots among the orgs with work
    /// waiting and claims them, in one transaction.
    async fn round(&self, passes: &mut HashMap<String, f64>, free: usize) -> anyhow::Result<Vec<Claimed>> {
        let mut tx = dispatch::begin(&self.pool).await?;
        let check_expiry = {
            let mut checked = self.expiry_checked.lock().expect("expiry check");
            let due = checked.is_none_or(|at| at.elapsed() >= EXPIRY_INTERVAL);
            if due {
                *checked = Some(std::time::Instant::now());
            }
            due
        };
        if check_expiry {
            let expired = dispatch::expire_leases(&mut tx).await?;
            if expired > 0 {
                tracing::warn!(expired, "leases expired: their workers stopped; the executions run again");
            }
        }
        let orgs = dispatch::orgs_waiting(&mut tx).await?;
        if orgs.is_empty() {
            tx.commit().await?;
            passes.clear();
            return Ok(Vec::new());
        }
        let running: HashMap<String, i64> = dispatch::running_by_org(&mut tx).await?.into_iter().collect();
        let limits = self.limits_of(&mut tx, &orgs).await?;
        passes.retain(|org, _| orgs.contains(org));
        let plan: Vec<(String, i64)> = plan(passes, &orgs, &limits, &running, free)
            .into_iter()
            .map(|(org, count)| (org, i64::from(count)))
            .collect();
        let got = dispatch::claim(
            &mut tx,
            &plan,
            &self.owner,
            self.lease_ms(),
            self.config.key_settle_ms as i64,
            i64::from(self.config.claim_window.max(1)),
        )
        .await?;
        let mut claimed = Vec::with_capacity(got.len());
        for claim in got {
            if dispatch::admit_throttled(&mut tx, &claim).await? {
                claimed.push(claim);
            }
        }
        tx.commit().await?;
        for claim in &claimed {
            let weight = limits.get(&claim.org_id).map_or(1.0, |l| l.weight);
            *passes.entry(claim.org_id.clone()).or_default() += 1.0 / weight;
        }
        self.held.lock().expect("held leases").extend(claimed.iter().map(|c| c.execution_id.clone()));
        Ok(claimed)
    }

    /// Each org's weight and cap: its tier's, or the operator's override.
    async fn limits_of(
        &self,
        tx: &mut sqlx::PgConnection,
        orgs: &[String],
    ) -> anyhow::Result<HashMap<String, OrgLimits>> {
        let mut found: HashMap<String, OrgLimits> =
            orgs.iter().filter_map(|org| self.limits.get(org).map(|l| (org.clone(), l))).collect();
        let missing: Vec<String> = orgs.iter().filter(|org| !found.contains_key(*org)).cloned().collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let settings = oa_tenancy::store::dispatch_settings(tx, &missing).await?;
        for org in missing {
            let row = settings.iter().find(|(id, ..)| *id == org);
            let tier = row.and_then(|(_, tier, ..)| self.tiers.get(tier)).unwrap_or(&self.tiers.starter);
            let limits = OrgLimits {
                weight: f64::from(row.and_then(|r| r.2).map_or(tier.dispatch_weight, |w| w as u32).max(1)),
                max_running: i64::from(row.and_then(|r| r.3).map_or(tier.max_running, |m| m as u32).max(1)),
            };
            self.limits.insert(org.clone(), limits);
            found.insert(org, limits);
        }
        Ok(found)
    }

    /// Runs a claimed execution and settles its work: done when the run stopped, handed back with
    /// a delay when it failed (up to `max_deliveries` failures, then given up), retried in place
    /// through an outage, given up at once on data that cannot be stored.
    async fn run_claimed(&self, engine: &Engine, claim: Claimed, hand_back: &CancellationToken) {
        let span =
            tracing::info_span!("dispatch", org_id = %claim.org_id, execution_id = %claim.execution_id);
        if let Some(traceparent) = &claim.traceparent {
            oa_telemetry::adopt_remote_parent(&span, oa_telemetry::context_from_traceparent(traceparent));
        }
        let id = claim.execution_id.clone();
        let item = WorkItem { org_id: claim.org_id.clone(), execution_ids: vec![id.clone()] };
        let failures = u64::try_from(claim.failures).unwrap_or_default();
        let mut giving_up = (failures >= self.max_deliveries)
            .then(|| max_deliveries_reason(failures, claim.last_error.as_deref()));
        let mut pause = FIRST_PAUSE;
        let settled = async {
            loop {
                let result = match &giving_up {
                    None => engine.run(&claim.org_id, &id, &|| async {}).await,
                    Some(reason) => engine.give_up(&item, reason.clone()).await,
                };
                let error = match result {
                    Ok(()) => break self.finish(&id).await,
                    Err(error) => error,
                };
                match (fault_of(&error), giving_up.is_some()) {
                    (Fault::BadData, false) => {
                        giving_up = Some(format!("{error:#}"));
                        continue;
                    }
                    (Fault::Other, false) if failures + 1 >= self.max_deliveries => {
                        giving_up = Some(max_deliveries_reason(failures + 1, Some(&format!("{error:#}"))));
                        continue;
                    }
                    (Fault::Other, false) => {
                        tracing::warn!(error = %format!("{error:#}"), failures = failures + 1, "run failed; it will run again");
                        let delay = self.redelivery_delay.as_millis() as i64;
                        if dispatch::release(
                            &self.pool,
                            &self.owner,
                            std::slice::from_ref(&id),
                            delay,
                            Some(&format!("{error:#}")),
                        )
                        .await
                        .is_ok()
                        {
                            break;
                        }
                    }
                    // An outage, or giving up could not be recorded yet: try again in place.
                    _ => {
                        tracing::warn!(error = %format!("{error:#}"), "outage: holding the execution and retrying")
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        };
        tokio::select! {
            () = settled.instrument(span) => tracing::debug!(execution_id = %id, "run settled"),
            () = hand_back.cancelled() => {
                if let Err(error) = dispatch::release(&self.pool, &self.owner, std::slice::from_ref(&id), 0, None).await {
                    tracing::warn!(%error, execution_id = %id, "could not hand the execution back; its lease will expire");
                }
            }
        }
        self.held.lock().expect("held leases").remove(&id);
    }

    /// Hands a stopped run's work to the flusher, which removes it with others.
    async fn finish(&self, id: &str) {
        if self.finished.send(id.to_owned()).is_err() {
            // No flusher (the dispatcher is ending): remove it now.
            let mut pause = FIRST_PAUSE;
            while let Err(error) = dispatch::done(&self.pool, &self.owner, &[id.to_owned()]).await {
                tracing::warn!(%error, execution_id = id, "cannot settle the execution's work; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }

    /// Removes finished runs' work in batches, retried until it lands (a lease left to expire
    /// would only run the ended executions again, to no effect), and wakes the dispatcher: their
    /// keys and their orgs' places are free, and work queued again meanwhile is back.
    async fn flush_finished(
        self: Arc<Self>,
        mut finished: tokio::sync::mpsc::UnboundedReceiver<String>,
        ended: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(FLUSH_BATCH);
        loop {
            let last = tokio::select! {
                biased;
                received = finished.recv_many(&mut batch, FLUSH_BATCH) => received == 0,
                () = ended.cancelled() => {
                    while let Ok(id) = finished.try_recv() {
                        batch.push(id);
                    }
                    true
                }
            };
            let mut pause = FIRST_PAUSE;
            while !batch.is_empty()
                && let Err(error) = dispatch::done(&self.pool, &self.owner, &batch).await
            {
                tracing::warn!(%error, runs = batch.len(), "cannot settle finished runs' work; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            batch.clear();
            self.wake.notify_one();
            if last {
                return;
            }
        }
    }

    /// Renews the leases this worker holds, every third of the lease, until `ended`.
    async fn renew_leases(self: Arc<Self>, ended: CancellationToken) {
        let every = self.config.lease() / 3;
        loop {
            tokio::select! {
                () = ended.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let ids: Vec<String> = self.held.lock().expect("held leases").iter().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            if let Err(error) = dispatch::renew(&self.pool, &self.owner, &ids, self.lease_ms()).await {
                tracing::warn!(%error, leases = ids.len(), "cannot renew leases");
            }
        }
    }

    /// Reads the backlog across orgs into the gauges the autoscaler and the lag alert watch.
    async fn observe_backlog(self: Arc<Self>, ended: CancellationToken) {
        let mut rounds = 0u64;
        loop {
            match dispatch::backlog(&self.pool).await {
                Ok((due, waiting, running)) => {
                    let gauge = |state: &'static str, value: i64| {
                        metrics::gauge!(metrics::DISPATCH_BACKLOG, "role" => "worker", "state" => state)
                            .set(value as f64)
                    };
                    gauge("due", due);
                    gauge("waiting", waiting);
                    gauge("running", running);
                }
                Err(error) => tracing::debug!(%error, "cannot read the dispatch backlog"),
            }
            if rounds.is_multiple_of(720) {
                let _ = dispatch::prune_throttle_starts(&self.pool).await;
            }
            rounds += 1;
            tokio::select! {
                () = ended.cancelled() => return,
                () = tokio::time::sleep(BACKLOG_INTERVAL) => {}
            }
        }
    }
}

/// Shares `free` slots among `orgs` in weighted round robin: each slot goes to the org with the
/// lowest pass that is under its cap, and moves that org's pass on by `1 / weight`. An org new to
/// the round starts at the lowest pass of the others. Returns how many each org gets.
pub fn plan(
    passes: &mut HashMap<String, f64>,
    orgs: &[String],
    limits: &HashMap<String, OrgLimits>,
    running: &HashMap<String, i64>,
    free: usize,
) -> Vec<(String, u32)> {
    let floor = orgs.iter().filter_map(|org| passes.get(org).copied()).fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 0.0 };
    for org in orgs {
        passes.entry(org.clone()).or_insert(floor);
    }
    let default = OrgLimits { weight: 1.0, max_running: 1 };
    // (index, room under the cap, weight, pass, given); ties go to the org running less.
    let mut room: Vec<(usize, i64, f64, f64, u32)> = orgs
        .iter()
        .enumerate()
        .map(|(i, org)| {
            let limits = limits.get(org).copied().unwrap_or(default);
            let room = limits.max_running - running.get(org).copied().unwrap_or(0);
            (i, room, limits.weight.max(f64::MIN_POSITIVE), passes[org], 0)
        })
        .filter(|(_, room, ..)| *room > 0)
        .collect();
    for _ in 0..free {
        let Some(next) = room
            .iter_mut()
            .filter(|(_, room, _, _, given)| i64::from(*given) < *room)
            .min_by(|a, b| a.3.total_cmp(&b.3).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)))
        else {
            break;
        };
        next.4 += 1;
        next.3 += 1.0 / next.2;
    }
    room.into_iter().filter(|r| r.4 > 0).map(|(i, _, _, _, given)| (orgs[i].clone(), given)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(entries: &[(&str, f64, i64)]) -> HashMap<String, OrgLimits> {
        entries
            .iter()
            .map(|(org, weight, max_running)| {
                ((*org).to_owned(), OrgLimits { weight: *weight, max_running: *max_running })
            })
            .collect()
    }

    fn orgs(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn slots_are_shared_by_weight() {
        let mut passes = HashMap::new();
        let plan = plan(
            &mut passes,
            &orgs(&["a", "b"]),
            &limits(&[("a", 1.0, 100), ("b", 3.0, 100)]),
            &HashMap::new(),
            8,
        );
        assert_eq!(plan, vec![("a".to_owned(), 2), ("b".to_owned(), 6)]);
    }

    #[test]
    fn a_flooding_org_does_not_hold_back_one_that_just_arrived() {
        // Org a has been served for a long time (a high pass) and runs 30; b arrives, joins at a's
        // pass, and gets the next slot (the tie goes to the org running less), then every other.
        let mut passes = HashMap::from([("a".to_owned(), 10_000.0)]);
        let running = HashMap::from([("a".to_owned(), 30)]);
        let limits = limits(&[("a", 1.0, 100), ("b", 1.0, 100)]);
        let first = plan(&mut passes, &orgs(&["a", "b"]), &limits, &running, 1);
        assert_eq!(first, vec![("b".to_owned(), 1)]);
        let four = plan(&mut passes, &orgs(&["a", "b"]), &limits, &running, 4);
        assert_eq!(four, vec![("a".to_owned(), 2), ("b".to_owned(), 2)]);
    }

    #[test]
    fn an_org_at_its_cap_gets_nothing_and_its_slots_go_to_others() {
        let mut passes = HashMap::new();
        let running = HashMap::from([("a".to_owned(), 4)]);
        let plan =
            plan(&mut passes, &orgs(&["a", "b"]), &limits(&[("a", 1.0, 5), ("b", 1.0, 100)]), &running, 6);
        assert_eq!(plan, vec![("a".to_owned(), 1), ("b".to_owned(), 5)]);
    }
}
