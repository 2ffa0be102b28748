//! Dead letters are written in batches: every letter that arrives while the previous batch is
//! being written goes into the next one, one statement per org. A flood of poison events from one
//! org (thousands of events that can never run) then costs a few statements instead of one
//! transaction each, and does not hold up the other orgs' events queued behind it.
//!
//! A letter's sender waits for its batch to be committed before it acks the event, so a letter
//! is never lost; a failed batch is reported to each sender with its fault, and the sender's
//! delivery rules (hold on an outage, redeliver otherwise) apply.

use std::collections::BTreeMap;

use oa_executions::store::{self, DeadLetter};
use oa_store::{Fault, begin_org};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Most letters written in one batch.
const BATCH: usize = 512;

/// A batch that could not be written, with what its failure means for the events in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("dead letters not stored: {message}")]
pub struct BatchFailed {
    pub fault: Fault,
    pub message: String,
}

type Reply = oneshot::Sender<Result<(), BatchFailed>>;

/// The handle senders use; the writer task ends when every handle is dropped.
#[derive(Clone)]
pub struct DeadLetters {
    sender: mpsc::Sender<(DeadLetter, Reply)>,
}

impl DeadLetters {
    pub fn start(pool: PgPool) -> DeadLetters {
        let (sender, receiver) = mpsc::channel(BATCH * 4);
        tokio::spawn(write_batches(pool, receiver));
        DeadLetters { sender }
    }

    /// Stores `letter` with the next batch and returns once it is committed.
    pub async fn store(&self, letter: DeadLetter) -> Result<(), BatchFailed> {
        let (reply, committed) = oneshot::channel();
        let stopped =
            || BatchFailed { fault: Fault::Outage, message: "the dead-letter writer stopped".into() };
        self.sender.send((letter, reply)).await.map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?
    }
}

async fn write_batches(pool: PgPool, mut receiver: mpsc::Receiver<(DeadLetter, Reply)>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let mut by_org: BTreeMap<String, Vec<(DeadLetter, Reply)>> = BTreeMap::new();
        for (letter, reply) in batch.drain(..) {
            by_org.entry(letter.org_id.clone()).or_default().push((letter, reply));
        }
        for (org_id, entries) in by_org {
            let (letters, replies): (Vec<DeadLetter>, Vec<Reply>) = entries.into_iter().unzip();
            match write(&pool, &org_id, &letters).await {
                Ok(()) => replies.into_iter().for_each(|reply| drop(reply.send(Ok(())))),
                Err(error) if fault_of(&error) == Fault::BadData => {
                    // One letter spoils its batch: each is written alone, and one that still
                    // cannot be stored is kept without its payload rather than lost.
                    for (letter, reply) in letters.into_iter().zip(replies) {
                        let _ = reply.send(write_alone(&pool, letter).await);
                    }
                }
                Err(error) => {
                    let failed = BatchFailed { fault: fault_of(&error), message: error.to_string() };
                    replies.into_iter().for_each(|reply| drop(reply.send(Err(failed.clone()))));
                }
            }
        }
    }
}

async fn write(pool: &PgPool, org_id: &str, letters: &[DeadLetter]) -> Result<(), oa_store::StoreError> {
    let mut tx = begin_org(pool, org_id).await?;
    store::insert_dead_letters(&mut tx, letters).await?;
    tx.commit().await?;
    Ok(())
}

async fn write_alone(pool: &PgPool, mut letter: DeadLetter) -> Result<(), BatchFailed> {
    let failed =
        |error: oa_store::StoreError| BatchFailed { fault: fault_of(&error), message: error.to_string() };
    match write(pool, &letter.org_id.clone(), std::slice::from_ref(&letter)).await {
        Err(error) if fault_of(&error) == Fault::BadData => {
            letter.payload = String::new();
            letter.reason = format!(
                "{} (the payload could not be stored)",
                letter.reason.chars().take(1_000).collect::<String>()
            );
            write(pool, &letter.org_id.clone(), std::slice::from_ref(&letter)).await.map_err(failed)
        }
        other => other.map_err(failed),
    }
}

fn fault_of(error: &oa_store::StoreError) -> Fault {
    match error {
        oa_store::StoreError::Database(error) => oa_store::fault(error),
        _ => Fault::Other,
    }
}
