//! The worker's intake: bus messages are pulled ahead of ingest into a queue per org, and ingest
//! takes them in turn, one org after another.
//!
//! The bus is one stream in arrival order. Read in that order, an org that floods 20,000 events
//! holds every other org's events behind its own until they are all ingested: a ransomware alert
//! waits seconds behind a misconfigured RMM's storm. Pulled ahead, the storm waits in its own
//! org's queue, and the next batch ingest takes holds the other orgs' events first.
//!
//! Pulled messages stay unacknowledged until they are written, so nothing in the intake is lost
//! when a worker dies: the bus delivers it again after the ack wait. Messages that wait in the
//! intake are kept alive with progress acks, and on drain those not yet started are handed back
//! at once, so another replica takes them without waiting out the ack wait.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oa_bus::async_nats::jetstream::{self, AckKind};
use tokio::sync::Notify;

/// Bounds on what one worker pulls ahead: messages and bytes.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub messages: usize,
    pub bytes: usize,
}

struct Held {
    message: jetstream::Message,
    /// When the bus was last told the message is in hand (pulled, or a progress ack).
    touched: Instant,
}

/// Items queued per org, taken one org at a time in turn.
struct Turns<T> {
    queues: HashMap<Arc<str>, VecDeque<T>>,
    /// The orgs with items waiting, in the order of their next turn.
    turns: VecDeque<Arc<str>>,
    len: usize,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Turns { queues: HashMap::new(), turns: VecDeque::new(), len: 0 }
    }
}

impl<T> Turns<T> {
    /// Queues an item behind its org's others; an org new to the queue takes the last turn.
    fn push(&mut self, org: &str, item: T) {
        self.len += 1;
        match self.queues.get_mut(org) {
            Some(queue) => queue.push_back(item),
            None => {
                let org: Arc<str> = Arc::from(org);
                self.queues.insert(org.clone(), VecDeque::from([item]));
                self.turns.push_back(org);
            }
        }
    }

    /// Takes one item from each org in turn until `max` are taken or none are left; an org with
    /// more waiting goes to the back of the turns.
    fn take(&mut self, max: usize) -> Vec<T> {
        let mut taken = Vec::with_capacity(max.min(self.len));
        while taken.len() < max {
            let Some(org) = self.turns.pop_front() else { break };
            let Some(queue) = self.queues.get_mut(&org) else { continue };
            let Some(item) = queue.pop_front() else {
                self.queues.remove(&org);
                continue;
            };
            self.len -= 1;
            taken.push(item);
            if queue.is_empty() {
                self.queues.remove(&org);
            } else {
                self.turns.push_back(org);
            }
        }
        taken
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.queues.values_mut().flat_map(|queue| queue.iter_mut())
    }

    fn drain(&mut self) -> Vec<T> {
        self.turns.clear();
        self.len = 0;
        self.queues.drain().flat_map(|(_, queue)| queue).collect()
    }
}

#[derive(Default)]
struct State {
    waiting: Turns<Held>,
    bytes: usize,
    closed: bool,
}

/// Pulled messages waiting for ingest, queued per org.
pub struct Intake {
    state: std::sync::Mutex<State>,
    bounds: Bounds,
    /// Signalled when messages are added or the intake closes.
    filled: Notify,
    /// Signalled when messages are taken.
    drained: Notify,
}

impl Intake {
    pub fn new(bounds: Bounds) -> Intake {
        Intake {
            state: std::sync::Mutex::new(State::default()),
            bounds: Bounds { messages: bounds.messages.max(1), bytes: bounds.bytes.max(1) },
            filled: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the intake has room for another message (an empty intake always has room,
    /// whatever the message's size).
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            {
                let state = self.state();
                let messages = state.waiting.len;
                if messages == 0 || (messages < self.bounds.messages && state.bytes < self.bounds.bytes) {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Queues a pulled message behind its org's others.
    pub fn push(&self, org: &str, message: jetstream::Message) {
        let mut state = self.state();
        state.bytes += message.length;
        state.waiting.push(org, Held { message, touched: Instant::now() });
        drop(state);
        self.filled.notify_one();
    }

    /// Takes up to `max` messages, one from each waiting org in turn, waiting for the first;
    /// `None` once the intake is closed.
    pub async fn take(&self, max: usize) -> Option<Vec<jetstream::Message>> {
        loop {
            let filled = self.filled.notified();
            {
                let mut state = self.state();
                if state.closed {
                    return None;
                }
                if state.waiting.len > 0 {
                    let taken: Vec<jetstream::Message> =
                        state.waiting.take(max.max(1)).into_iter().map(|held| held.message).collect();
                    let bytes: usize = taken.iter().map(|message| message.length).sum();
                    state.bytes = state.bytes.saturating_sub(bytes);
                    let more = state.waiting.len > 0;
                    drop(state);
                    self.drained.notify_waiters();
                    if more {
                        // Another pipeline may take the rest.
                        self.filled.notify_one();
                    }
                    return Some(taken);
                }
            }
            filled.await;
        }
    }

    /// Tells the bus that the messages waiting longer than `every` are still in hand, so they
    /// are not delivered again while they wait their turn.
    pub async fn keep_alive(&self, every: Duration) {
        let now = Instant::now();
        let stale: Vec<jetstream::Message> = {
            let mut state = self.state();
            state
                .waiting
                .iter_mut()
                .filter(|held| now.duration_since(held.touched) >= every)
                .map(|held| {
                    held.touched = now;
                    held.message.clone()
                })
                .collect()
        };
        for message in stale {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }

    /// Closes the intake and hands every waiting message back to the bus: ingest takes no more,
    /// and another replica can take these at once.
    pub async fn close(&self) {
        let waiting: Vec<jetstream::Message> = {
            let mut state = self.state();
            state.closed = true;
            state.bytes = 0;
            state.waiting.drain().into_iter().map(|held| held.message).collect()
        };
        self.filled.notify_waiters();
        self.drained.notify_waiters();
        if !waiting.is_empty() {
            tracing::info!(
                messages = waiting.len(),
                "draining: handing the events not yet started back to the bus"
            );
        }
        futures::future::join_all(waiting.iter().map(|message| message.ack_with(AckKind::Nak(None)))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orgs_take_turns_and_keep_their_own_order() {
        let mut turns = Turns::default();
        for n in 0..5 {
            turns.push("flood", format!("a{n}"));
        }
        turns.push("quiet", "b0".to_string());
        turns.push("other", "c0".to_string());
        turns.push("quiet", "b1".to_string());
        assert_eq!(turns.take(4), ["a0", "b0", "c0", "a1"]);
        assert_eq!(turns.len, 4);
        // Orgs that still wait keep their turn order; one that arrives now goes last.
        turns.push("late", "d0".to_string());
        assert_eq!(turns.take(10), ["b1", "a2", "d0", "a3", "a4"]);
        assert_eq!(turns.len, 0);
        assert!(turns.take(3).is_empty());
    }

    #[test]
    fn a_flood_does_not_hold_back_an_org_that_arrives_after_it() {
        let mut turns = Turns::default();
        for n in 0..20_000 {
            turns.push("flood", n);
        }
        turns.push("quiet", -1);
        let first = turns.take(64);
        assert!(first.contains(&-1), "the quiet org's event is in the first batch");
        assert_eq!(first.iter().filter(|n| **n >= 0).count(), 63);
        assert_eq!(turns.drain().len(), 20_000 - 63);
        assert_eq!(turns.len, 0);
    }
}
