//! The in-process limiter: the same contract as the shared one, for a single instance.
//! One short critical section per admission and per settlement; no await while locked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::bucket::{Bucket, Take};
use super::{Admission, Ask, DecidedBy, LimitKind, Quota, RateState, Refusal};
use crate::config::Limits;

/// What a client refused for concurrent streams is told to wait: a stream may end any moment.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct KeyState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Lease id -> expiry (ms since the limiter started).
    leases: HashMap<u64, u64>,
}

#[derive(Debug)]
pub struct LocalLimiter {
    keys: Mutex<HashMap<Arc<str>, KeyState>>,
    started: Instant,
    next_lease: AtomicU64,
    lease_ttl: Duration,
}

impl LocalLimiter {
    /// `lease_ttl` bounds how long a lease outlives a request that was never settled.
    pub fn new(lease_ttl: Duration) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_lease: AtomicU64::new(1),
            lease_ttl,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn admit(&self, ask: Ask<'_>) -> Result<Admission, Refusal> {
        let now = self.now_ms();
        let limits = *ask.limits;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let state = keys.entry(ask.key_id.clone()).or_default();
        state.leases.retain(|_, expiry| *expiry > now);
        let snapshot = |state: &KeyState| rate_state(state, &limits, now);
        if let Some(max) = limits.concurrent_streams
            && state.leases.len() as u64 >= u64::from(max.get())
        {
            return Err(refusal(
                LimitKind::Streams,
                u64::from(max.get()),
                STREAM_RETRY_AFTER,
                false,
                snapshot(state),
            ));
        }
        let requests = match take(
            state.requests,
            limits.requests_per_minute.map(|n| u64::from(n.get())),
            1,
            now,
        ) {
            Ok(bucket) => bucket,
            Err((limit, wait, never)) => {
                return Err(refusal(
                    LimitKind::Requests,
                    limit,
                    wait,
                    never,
                    snapshot(state),
                ));
            }
        };
        let tokens = match take(
            state.tokens,
            limits.tokens_per_minute.map(|n| n.get()),
            ask.tokens,
            now,
        ) {
            Ok(bucket) => bucket,
            Err((limit, wait, never)) => {
                return Err(refusal(
                    LimitKind::Tokens,
                    limit,
                    wait,
                    never,
                    snapshot(state),
                ));
            }
        };
        state.requests = requests;
        state.tokens = tokens;
        let lease = limits.concurrent_streams.map(|_| {
            let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
            state
                .leases
                .insert(id, now + self.lease_ttl.as_millis() as u64);
            id
        });
        Ok(Admission {
            key_id: ask.key_id.clone(),
            limits,
            reserved_tokens: ask.tokens,
            lease,
            state: snapshot(state),
            decided_by: DecidedBy::Local,
        })
    }

    pub fn settle(&self, admission: &Admission, used_tokens: u64) {
        let now = self.now_ms();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = keys.get_mut(&admission.key_id) else {
            return;
        };
        if let Some(lease) = admission.lease {
            state.leases.remove(&lease);
        }
        if let (Some(bucket), Some(capacity)) = (state.tokens, admission.limits.tokens_per_minute) {
            let refund = super::refund(admission.reserved_tokens, used_tokens);
            state.tokens = Some(bucket.adjust(capacity.get(), refund, now));
        }
    }
}

/// Takes `cost` from the bucket of a limit, creating it full; `Ok(None)` when unlimited.
fn take(
    bucket: Option<Bucket>,
    capacity: Option<u64>,
    cost: u64,
    now: u64,
) -> Result<Option<Bucket>, (u64, Duration, bool)> {
    let Some(capacity) = capacity else {
        return Ok(None);
    };
    match bucket
        .unwrap_or_else(|| Bucket::full(capacity, now))
        .take(capacity, cost, now)
    {
        Take::Granted(bucket) => Ok(Some(bucket)),
        Take::Wait { retry_after_ms } => {
            Err((capacity, Duration::from_millis(retry_after_ms), false))
        }
        Take::Never => Err((capacity, Duration::ZERO, true)),
    }
}

fn refusal(
    kind: LimitKind,
    limit: u64,
    retry_after: Duration,
    never_fits: bool,
    state: RateState,
) -> Refusal {
    Refusal {
        kind,
        limit,
        retry_after,
        never_fits,
        state,
    }
}

fn rate_state(state: &KeyState, limits: &Limits, now: u64) -> RateState {
    let quota = |bucket: Option<Bucket>, capacity: Option<u64>| {
        capacity.map(|capacity| {
            let bucket = bucket
                .unwrap_or_else(|| Bucket::full(capacity, now))
                .refilled(capacity, now);
            Quota {
                limit: capacity,
                remaining: bucket.remaining(),
                reset: Duration::from_millis(bucket.reset_ms(capacity)),
            }
        })
    };
    RateState {
        requests: quota(
            state.requests,
            limits.requests_per_minute.map(|n| u64::from(n.get())),
        ),
        tokens: quota(state.tokens, limits.tokens_per_minute.map(|n| n.get())),
    }
}
