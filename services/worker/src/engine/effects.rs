//! Side effects that must happen once per step attempt (a message sent, a product action taken).
//!
//! The runner reads the step's recorded results in the transaction that starts it; a side effect
//! with a recorded result answers that instead of acting. A new result is checked, kept here, and
//! written in the transaction that finishes the step. The order is the one that makes it safe:
//! the provider sees the idempotency key before anything is recorded, and only a success is
//! recorded. A worker that dies between the two repeats the call with the same key, which the
//! provider deduplicates.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use serde_json::Value;

use crate::providers::StepError;

#[derive(Debug, Default)]
pub struct Effects {
    recorded: HashMap<String, Value>,
    new: Mutex<Vec<(String, Value)>>,
}

impl Effects {
    pub fn new(recorded: HashMap<String, Value>) -> Effects {
        Effects { recorded, new: Mutex::default() }
    }

    /// Performs `act` once under `key`: a recorded result is returned instead of acting. What the
    /// outside answered is checked (see [`super::output`]) before it is kept, so an answer that
    /// cannot be stored fails the step once and the side effect is not repeated.
    pub async fn once<F, Fut>(&self, key: &str, output_limit: usize, act: F) -> Result<Value, StepError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, StepError>>,
    {
        if let Some(done) = self.recorded.get(key) {
            return Ok(done.clone());
        }
        let result = act().await.and_then(|output| super::output::checked(output, output_limit));
        if let Ok(value) = &result {
            self.new.lock().unwrap_or_else(|e| e.into_inner()).push((key.to_owned(), value.clone()));
        }
        result
    }

    /// The results to record, taken once.
    pub fn take_new(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_recorded_effect_answers_without_acting() {
        let calls = AtomicUsize::new(0);
        let act = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"sent": true}))
        };
        let effects = Effects::new(HashMap::from([("k1".to_owned(), json!({"sent": "before"}))]));
        assert_eq!(effects.once("k1", 1000, act).await.unwrap(), json!({"sent": "before"}));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(effects.take_new().is_empty());
    }

    #[tokio::test]
    async fn only_a_good_answer_is_kept_for_recording() {
        let effects = Effects::default();
        assert_eq!(effects.once("ok", 1000, || async { Ok(json!(1)) }).await.unwrap(), json!(1));
        let failed =
            effects.once("down", 1000, || async { Err(StepError::new("delivery_failed", "503")) }).await;
        assert_eq!(failed.unwrap_err().code, "delivery_failed");
        let huge = effects.once("huge", 10, || async { Ok(json!("x".repeat(100))) }).await;
        assert_eq!(huge.unwrap_err().code, "output_too_large");
        assert_eq!(effects.take_new(), vec![("ok".to_owned(), json!(1))]);
        assert!(effects.take_new().is_empty());
    }
}
