//! The shared limiter: every admission is ONE round trip, an EVALSHA of `admit.lua`, which
//! checks and takes all of a request's limits atomically on Redis server time. Settlement
//! (`settle.lua`) runs off the request path. Keys are hash-tagged per API key (`{key}`), so all
//! of a request's keys live in one Redis Cluster slot.
//!
//! Redis trouble never becomes client latency or a 500: every call is bounded by
//! `redis.timeout`, admissions are sent exactly once (fred's replay after a reconnect is off, it
//! would charge twice), a breaker stops calling a Redis that keeps failing (one probe a second
//! while open), and meanwhile `redis.on_error` decides: the in-process limiter, allow, or deny.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::time::Instant;

use super::local::LocalLimiter;
use super::{Admission, Ask, DecidedBy, LimitKind, Quota, RateState, Refusal};
use crate::config::{OnRedisError, RedisConfig};

const ADMIT_LUA: &str = include_str!("admit.lua");
const SETTLE_LUA: &str = include_str!("settle.lua");
/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker waits between probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long startup waits for a first Redis connection.
const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// Bound on a settlement, which runs after the response.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a shared admission did not decide.
#[derive(Debug)]
pub enum SharedError {
    Refused(Refusal),
    /// Redis is unreachable and `on_error: deny`.
    Unavailable,
}

#[derive(Debug)]
pub struct RedisLimiter {
    pool: Pool,
    admit: Script,
    settle: Script,
    timeout: Duration,
    prefix: String,
    lease_ttl: Duration,
    on_error: OnRedisError,
    fallback: LocalLimiter,
    health: Health,
    lease_seed: i64,
    next_lease: AtomicU64,
}

impl RedisLimiter {
    pub fn new(config: &RedisConfig, lease_ttl: Duration) -> Result<Self, fred::error::Error> {
        let mut fred_config = Config::from_url(&config.url)?;
        fred_config.fail_fast = false;
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = config.timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let seed = std::collections::hash_map::RandomState::new();
        Ok(Self {
            pool: builder.build_pool(config.pool_size.get())?,
            admit: Script::from_lua(ADMIT_LUA),
            settle: Script::from_lua(SETTLE_LUA),
            timeout: config.timeout,
            prefix: config.key_prefix.clone(),
            lease_ttl,
            on_error: config.on_error,
            fallback: LocalLimiter::new(lease_ttl),
            health: Health::new(),
            lease_seed: (std::hash::BuildHasher::hash_one(&seed, std::process::id()) as i64
                & 0xffff_ffff)
                << 31,
            next_lease: AtomicU64::new(1),
        })
    }

    /// Starts connecting (fred reconnects in the background from then on) and waits up to
    /// `STARTUP_WAIT` for a first connection, so a healthy Redis decides the first requests.
    /// A Redis that is down at start only delays the start by that much; admissions fall back
    /// until it answers.
    pub async fn connect(&self) {
        let _connections = self.pool.connect();
        if tokio::time::timeout(STARTUP_WAIT, self.pool.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("Redis is not reachable yet; admissions use redis.on_error until it is");
        }
    }

    pub fn denies_when_down(&self) -> bool {
        self.on_error == OnRedisError::Deny
    }

    /// Whether Redis is connected and answered the last calls (the breaker is closed).
    pub fn is_up(&self) -> bool {
        self.health.is_up()
            && self
                .pool
                .clients()
                .iter()
                .any(|client| client.is_connected())
    }

    pub async fn admit(&self, ask: Ask<'_>) -> Result<Admission, SharedError> {
        if !self.health.allow() {
            return self.fall_back(ask);
        }
        let lease = self.lease_seed
            | (self.next_lease.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff) as i64;
        let limits = ask.limits;
        let args = vec![
            limits.requests_per_minute.map_or(0, |n| i64::from(n.get())),
            limits.tokens_per_minute.map_or(0, |n| n.get() as i64),
            ask.tokens as i64,
            limits.concurrent_streams.map_or(0, |n| i64::from(n.get())),
            lease,
            self.lease_ttl.as_millis() as i64,
        ];
        let call = self.admit.evalsha_with_reload::<Vec<i64>, _, _>(
            self.pool.next(),
            self.keys(ask.key_id).to_vec(),
            args,
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) if reply.len() == 8 => {
                self.health.succeeded();
                decide(&reply, ask, lease).map_err(SharedError::Refused)
            }
            _ => {
                self.health.failed();
                self.fall_back(ask)
            }
        }
    }

    /// Settles an admission this limiter decided; the caller runs it off the request path.
    pub async fn settle(&self, admission: &Admission, used_tokens: u64) {
        if admission.decided_by == DecidedBy::Local {
            self.fallback.settle(admission, used_tokens);
            return;
        }
        let [_, tokens_key, leases_key] = self.keys(&admission.key_id);
        let cap = admission
            .limits
            .tokens_per_minute
            .map_or(0, |n| n.get() as i64);
        let adjustment = admission.reserved_tokens as i64 - used_tokens as i64;
        let lease = admission.lease.map(|id| id.to_string()).unwrap_or_default();
        let args: Vec<String> = vec![cap.to_string(), adjustment.to_string(), lease];
        let call = self.settle.evalsha_with_reload::<i64, _, _>(
            self.pool.next(),
            vec![tokens_key, leases_key],
            args,
        );
        if let Ok(Err(_)) | Err(_) = tokio::time::timeout(SETTLE_TIMEOUT, call).await {
            self.health.failed();
        }
    }

    fn fall_back(&self, ask: Ask<'_>) -> Result<Admission, SharedError> {
        match self.on_error {
            OnRedisError::Local => self.fallback.admit(ask).map_err(SharedError::Refused),
            OnRedisError::Allow => Ok(Admission {
                key_id: ask.key_id.clone(),
                limits: *ask.limits,
                reserved_tokens: ask.tokens,
                lease: None,
                state: RateState::default(),
                decided_by: DecidedBy::Unmetered,
            }),
            OnRedisError::Deny => Err(SharedError::Unavailable),
        }
    }

    /// The requests bucket, tokens bucket and leases of a key, all in the key's hash slot.
    fn keys(&self, key_id: &str) -> [String; 3] {
        let prefix = &self.prefix;
        ["rpm", "tpm", "streams"].map(|kind| format!("{prefix}:{{{key_id}}}:{kind}"))
    }
}

/// Turns the script's reply into an admission or a refusal.
fn decide(reply: &[i64], ask: Ask<'_>, lease: i64) -> Result<Admission, Refusal> {
    let [
        status,
        kind,
        limit,
        retry_ms,
        req_remaining,
        req_reset,
        tok_remaining,
        tok_reset,
    ] = <[i64; 8]>::try_from(reply).expect("invariant: the caller checked the length");
    let quota = |limit: Option<u64>, remaining: i64, reset: i64| {
        limit.map(|limit| Quota {
            limit,
            remaining: remaining.max(0) as u64,
            reset: Duration::from_millis(reset.max(0) as u64),
        })
    };
    let limits = *ask.limits;
    let state = RateState {
        requests: quota(
            limits.requests_per_minute.map(|n| u64::from(n.get())),
            req_remaining,
            req_reset,
        ),
        tokens: quota(
            limits.tokens_per_minute.map(|n| n.get()),
            tok_remaining,
            tok_reset,
        ),
    };
    if status == 1 {
        return Ok(Admission {
            key_id: ask.key_id.clone(),
            limits,
            reserved_tokens: ask.tokens,
            lease: limits.concurrent_streams.map(|_| lease as u64),
            state,
            decided_by: DecidedBy::Shared,
        });
    }
    Err(Refusal {
        kind: match kind {
            1 => LimitKind::Requests,
            2 => LimitKind::Tokens,
            _ => LimitKind::Streams,
        },
        limit: limit.max(0) as u64,
        retry_after: Duration::from_millis(retry_ms.max(0) as u64),
        never_fits: status == -1,
        state,
    })
}

/// A small breaker over Redis calls: open after consecutive failures, then one probe a second.
#[derive(Debug)]
struct Health {
    failures: AtomicU32,
    next_probe_ms: AtomicU64,
    started: Instant,
}

impl Health {
    fn new() -> Self {
        Self {
            failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_up(&self) -> bool {
        self.failures.load(Ordering::Acquire) < FAILURES_TO_OPEN
    }

    /// Whether to call Redis now: always while closed; while open, once per probe interval.
    fn allow(&self) -> bool {
        if self.is_up() {
            return true;
        }
        let now = self.now_ms();
        let next = self.next_probe_ms.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }

    fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::AcqRel) + 1 == FAILURES_TO_OPEN {
            self.next_probe_ms.store(
                self.now_ms() + PROBE_EVERY.as_millis() as u64,
                Ordering::Release,
            );
        }
    }
}
