//! The shared limiter: every admission is ONE round trip, an EVALSHA of `admit.lua`, which
//! checks and takes all of a request's limits atomically on Redis server time. Settlement
//! (`settle.lua`) runs off the request path, coalesced into few calls (`settle_batch`). Keys
//! are hash-tagged per API key (`{key}`), so all of a request's keys live in one Redis Cluster
//! slot.
//!
//! Redis trouble never becomes client latency or a 500: every call is bounded by
//! `redis.timeout`, admissions are sent exactly once (fred's replay after a reconnect is off, it
//! would charge twice), a breaker stops calling a Redis that keeps failing (one probe a second
//! while open), and meanwhile `redis.on_error` decides: the in-process limiter, allow, or deny.
//!
//! An admission without a usable reply (it timed out, the connection failed, or Redis answered
//! with an error) may still have been applied. Each admission that settlement must find again
//! carries an id the script records; the same connection is then sent that id's settlement with
//! nothing used, which undoes the admission if it happened and changes nothing if it did not
//! (settlement is idempotent by that id).

mod health;
mod reply;
mod settle_batch;

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::local::LocalLimiter;
use super::{Admission, Ask, DecidedBy, RateState, Refusal};
use crate::config::{OnRedisError, RedisConfig};
use crate::telemetry::metrics;
use health::Health;
use reply::{Failure, classify, decide};
use settle_batch::{Entry, SettleQueue};

const ADMIT_LUA: &str = include_str!("admit.lua");
const SETTLE_LUA: &str = include_str!("settle.lua");
/// How long startup waits for a first Redis connection.
const STARTUP_WAIT: Duration = Duration::from_secs(2);
/// Bound on a settlement, which runs after the response.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest magnitude the scripts accept for a number (their arithmetic is exact below it).
const MAX_SCRIPT_NUMBER: u64 = (1 << 53) - 1;

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
    /// Settlements waiting to be sent together.
    settlements: SettleQueue,
    /// Settlements and undos in flight, awaited (bounded) at shutdown.
    tasks: TaskTracker,
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
            // Admissions are bounded by `redis.timeout` where they are awaited; the client's own
            // bound is settlement's, which may wait longer off the request path.
            .with_performance_config(|p| p.default_command_timeout = SETTLE_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
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
            settlements: SettleQueue::default(),
            tasks: TaskTracker::new(),
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

    pub fn pool_and_prefix(&self) -> (&Pool, &str) {
        (&self.pool, &self.prefix)
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
        if let Some(refusal) = never_fits(ask) {
            return Err(SharedError::Refused(refusal));
        }
        if !self.health.allow() {
            return self.fall_back(ask);
        }
        let limits = ask.limits;
        let tracked = limits.tokens_per_minute.is_some() || limits.concurrent_streams.is_some();
        // 53 random bits per admission, whatever replica takes it: ids of one key's admissions
        // in flight do not collide, and stay below 2^53, where the scripts' numbers are exact.
        let id = tracked.then(|| fastrand::u64(1..=MAX_SCRIPT_NUMBER));
        let args: Vec<i64> = [
            limits.requests_per_minute.map_or(0, |n| u64::from(n.get())),
            limits.tokens_per_minute.map_or(0, |n| n.get()),
            if limits.tokens_per_minute.is_some() {
                ask.tokens
            } else {
                0
            },
            limits.concurrent_streams.map_or(0, |n| u64::from(n.get())),
            id.unwrap_or(0),
            u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX),
        ]
        .map(script_number)
        .to_vec();
        let client = self.pool.next().clone();
        let keys = Vec::from(self.keys(ask.key_id));
        let call = self
            .admit
            .evalsha_with_reload::<Vec<i64>, _, _>(&client, keys, args);
        let started = Instant::now();
        let (failure, detail) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => match <[i64; 8]>::try_from(reply) {
                Ok(reply) => {
                    metrics::record_redis_call("admit", "ok", started.elapsed());
                    self.health.succeeded();
                    return decide(reply, ask, id).map_err(SharedError::Refused);
                }
                Err(_) => (Failure::Rejected, "a reply of the wrong shape".to_owned()),
            },
            Ok(Err(error)) => (classify(&error), error.to_string()),
            Err(_) => (Failure::Unreachable, "timed out".to_owned()),
        };
        metrics::record_redis_call("admit", failure.label(), started.elapsed());
        match failure {
            Failure::Unreachable => self.health.failed(),
            Failure::Rejected => {
                // Redis error replies name the command and its problem, never argument values.
                tracing::error!(key_id = %ask.key_id, error = %detail, "the admission script failed with an error reply");
            }
        }
        // Whatever went wrong, the admission may have been applied: undo it (idempotent).
        if let Some(id) = id {
            self.undo(client, ask, id);
        }
        self.fall_back(ask)
    }

    /// Settles an admission this limiter decided; the caller runs it off the request path.
    /// Shared settlements are coalesced (see `settle_batch`): this call may only queue its
    /// settlement, or send it together with others.
    pub async fn settle(&self, admission: &Admission, used_tokens: u64) {
        if admission.decided_by == DecidedBy::Local {
            self.fallback.settle(admission, used_tokens);
            return;
        }
        let Some(id) = admission.lease else {
            return;
        };
        let entry = Entry {
            key_id: admission.key_id.clone(),
            tokens_cap: admission.limits.tokens_per_minute.map_or(0, |n| n.get()),
            adjustment: super::refund(admission.reserved_tokens, used_tokens),
            id,
        };
        if !self.settlements.push(entry) {
            return;
        }
        // Should this flusher stop early (cancelled, or a panic), the turn passes on.
        let mut turn = FlusherTurn {
            queue: &self.settlements,
            over: false,
        };
        tokio::time::sleep(settle_batch::GATHER).await;
        while let Some(batch) = self.settlements.take() {
            let calls = settle_batch::calls(batch, |id| key_of(&self.prefix, id, "tpm"))
                .into_iter()
                .map(|entries| self.send_settlements(entries));
            futures_util::future::join_all(calls).await;
        }
        turn.over = true;
    }

    /// One script call settling `entries` (all of one hash slot).
    async fn send_settlements(&self, entries: Vec<Entry>) {
        let call = settle_call(
            self.settle.clone(),
            self.pool.next().clone(),
            &self.prefix,
            &entries,
        );
        let started = Instant::now();
        let failed = match tokio::time::timeout(SETTLE_TIMEOUT, call).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(classify(&error)),
            Err(_) => Some(Failure::Unreachable),
        };
        let result = failed.map_or("ok", Failure::label);
        metrics::record_redis_call("settle", result, started.elapsed());
        if failed == Some(Failure::Unreachable) {
            self.health.failed();
        }
    }

    /// Runs `work` off the request path, tracked so shutdown can wait for it.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        #[expect(
            clippy::disallowed_methods,
            reason = "settlement outlives the response by design; bounded by its timeout and \
                      awaited at shutdown"
        )]
        self.tasks.spawn(work);
    }

    /// Waits up to `bound` for settlements still running (shutdown calls this after the last
    /// connection closed, so leases and reservations are not left to expire).
    pub async fn finish(&self, bound: Duration) {
        self.tasks.close();
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.tasks.len(),
                "settlements still running at shutdown; their leases expire on their own"
            );
        }
    }

    /// Sends, on the connection the admission went out on (so it runs after it, if that ever
    /// ran), the settlement of admission `id` with nothing used: a best-effort undo.
    fn undo(&self, client: Client, ask: Ask<'_>, id: u64) {
        let tokens_cap = ask.limits.tokens_per_minute.map_or(0, |n| n.get());
        let entry = Entry {
            key_id: ask.key_id.clone(),
            tokens_cap,
            adjustment: if tokens_cap > 0 {
                super::refund(ask.tokens, 0)
            } else {
                0
            },
            id,
        };
        let call = settle_call(self.settle.clone(), client, &self.prefix, &[entry]);
        self.spawn(async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(SETTLE_TIMEOUT, call).await {
                Ok(Ok(_)) => "ok",
                Ok(Err(error)) => classify(&error).label(),
                Err(_) => Failure::Unreachable.label(),
            };
            metrics::record_redis_call("undo", result, started.elapsed());
        });
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

    /// The requests bucket, tokens bucket and admissions in flight of a key, all in the key's
    /// hash slot.
    fn keys(&self, key_id: &str) -> [String; 3] {
        ["rpm", "tpm", "inflight"].map(|kind| key_of(&self.prefix, key_id, kind))
    }
}

/// A request whose reservation exceeds the key's whole tokens-per-minute budget can never be
/// admitted: refused here, without a round trip, and before its size reaches any script.
fn never_fits(ask: Ask<'_>) -> Option<Refusal> {
    let limit = ask.limits.tokens_per_minute?.get();
    (ask.tokens > limit).then(|| Refusal {
        kind: super::LimitKind::Tokens,
        limit,
        retry_after: Duration::ZERO,
        never_fits: true,
        state: RateState::default(),
    })
}

/// A number as the scripts take it: saturated at the largest they accept.
fn script_number(n: u64) -> i64 {
    i64::try_from(n.min(MAX_SCRIPT_NUMBER)).expect("invariant: below 2^53")
}

/// A flusher's turn: dropped before the queue was found empty, it ends the turn, so the next
/// settlement flushes.
struct FlusherTurn<'a> {
    queue: &'a SettleQueue,
    /// Set once `take` ended the turn itself.
    over: bool,
}

impl Drop for FlusherTurn<'_> {
    fn drop(&mut self) {
        if !self.over {
            self.queue.abandon_turn();
        }
    }
}

/// A limiter key of an API key, hash-tagged so all of that key's keys share a slot.
fn key_of(prefix: &str, key_id: &str, kind: &str) -> String {
    format!("{prefix}:{{{key_id}}}:{kind}")
}

/// One call of the settlement script for `entries`, owning everything it needs so it can run
/// in a task of its own.
fn settle_call(
    script: Script,
    client: Client,
    prefix: &str,
    entries: &[Entry],
) -> impl Future<Output = Result<i64, fred::error::Error>> + Send + 'static {
    let bound = i64::try_from(MAX_SCRIPT_NUMBER).expect("invariant: below 2^53");
    let mut keys = Vec::with_capacity(entries.len() * 2);
    let mut args = Vec::with_capacity(entries.len() * 3);
    for entry in entries {
        keys.push(key_of(prefix, &entry.key_id, "tpm"));
        keys.push(key_of(prefix, &entry.key_id, "inflight"));
        args.push(script_number(entry.tokens_cap).to_string());
        args.push(entry.adjustment.clamp(-bound, bound).to_string());
        args.push(entry.id.to_string());
    }
    async move {
        script
            .evalsha_with_reload::<i64, _, _>(&client, keys, args)
            .await
    }
}
