//! Per-org and per-key request limits in Redis: fixed windows counted atomically by one Lua
//! script (INCR, and PEXPIRE on the first hit). Hand-written because no maintained crate does
//! distributed limits on the `redis` 1.x client; the script is the whole mechanism.
//!
//! Redis holds only what may be lost: when it is unreachable, requests pass and a warning is
//! logged, so a Redis outage never takes the API down.

use std::time::{SystemTime, UNIX_EPOCH};

use oa_config::RateLimitConfig;
use oa_domain::{Caller, Principal};

const SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  out[i] = count
end
return out
";

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allowed { remaining: u64 },
    Limited { retry_after_seconds: u64 },
}

pub struct RateLimiter {
    config: RateLimitConfig,
    key_prefix: String,
    script: redis::Script,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig, key_prefix: &str) -> Self {
        RateLimiter { config, key_prefix: key_prefix.to_owned(), script: redis::Script::new(SCRIPT) }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Counts this request against the caller's org and, for a key, against the key.
    pub async fn check(
        &self,
        redis: &mut redis::aio::ConnectionManager,
        caller: &Caller,
    ) -> redis::RedisResult<Decision> {
        let (window_index, retry_after_seconds) = self.window();
        let mut keys = vec![(
            format!("{}:rl:org:{}:{window_index}", self.key_prefix, caller.org_id),
            self.config.per_org,
        )];
        if let Principal::IntegrationKey { key_id, .. } = &caller.principal {
            keys.push((format!("{}:rl:key:{key_id}:{window_index}", self.key_prefix), self.config.per_key));
        }
        self.count(redis, &keys, retry_after_seconds).await
    }

    fn window(&self) -> (u64, u64) {
        let window = self.config.window_seconds;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let window_index = now / window;
        (window_index, ((window_index + 1) * window).saturating_sub(now).max(1))
    }

    fn auth_failure_key(&self, client: std::net::IpAddr) -> String {
        format!("{}:rl:authfail:{client}:{}", self.key_prefix, self.window().0)
    }

    /// Whether `client` has failed authentication too often this window: then even a right
    /// credential is refused until the window ends, so guessing cannot go on.
    pub async fn auth_failures_exceeded(
        &self,
        redis: &mut redis::aio::ConnectionManager,
        client: std::net::IpAddr,
    ) -> redis::RedisResult<Option<u64>> {
        let failures: Option<u64> =
            redis::cmd("GET").arg(self.auth_failure_key(client)).query_async(redis).await?;
        let over = failures.unwrap_or(0) >= self.config.auth_failures_per_client;
        Ok(over.then_some(self.window().1))
    }

    /// Counts one failed authentication of `client`.
    pub async fn record_auth_failure(
        &self,
        redis: &mut redis::aio::ConnectionManager,
        client: std::net::IpAddr,
    ) -> redis::RedisResult<()> {
        let key = (self.auth_failure_key(client), self.config.auth_failures_per_client);
        self.count(redis, &[key], self.window().1).await.map(|_| ())
    }

    async fn count(
        &self,
        redis: &mut redis::aio::ConnectionManager,
        keys: &[(String, u64)],
        retry_after_seconds: u64,
    ) -> redis::RedisResult<Decision> {
        let window = self.config.window_seconds;
        let mut invocation = self.script.prepare_invoke();
        for (key, _) in keys {
            invocation.key(key);
        }
        invocation.arg(window * 1000 + 1000);
        let counts: Vec<u64> = invocation.invoke_async(redis).await?;

        let mut remaining = u64::MAX;
        for ((_, limit), count) in keys.iter().zip(counts) {
            if count > *limit {
                return Ok(Decision::Limited { retry_after_seconds });
            }
            remaining = remaining.min(limit - count);
        }
        Ok(Decision::Allowed { remaining })
    }
}
