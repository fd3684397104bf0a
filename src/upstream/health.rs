//! What routing knows about one backend: its weight and in-flight cap, how many requests it has
//! in flight, its circuit breaker, and a cool-down after it answered 429.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::{Breaker, BreakerState};
use crate::config::{BackendConfig, BreakerConfig};

#[derive(Debug)]
pub struct BackendHealth {
    pub weight: NonZeroU32,
    max_inflight: Option<NonZeroUsize>,
    in_flight: AtomicUsize,
    /// Requests ever sent; breaks ties between equally loaded backends.
    served: AtomicU64,
    pub breaker: Breaker,
    /// Milliseconds since `epoch()` until which the backend asked not to be called.
    cool_until_ms: AtomicU64,
}

impl BackendHealth {
    pub fn new(config: &BackendConfig, breaker: &BreakerConfig) -> Self {
        Self {
            weight: config.weight,
            max_inflight: config.max_inflight,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            breaker: Breaker::new(breaker, &config.name),
            cool_until_ms: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A request starts; pair with `leave` (the `Attempt` in `pool.rs` does).
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The remaining cool-down, if the backend is cooling down.
    pub fn cooling(&self) -> Option<Duration> {
        let until = self.cool_until_ms.load(Ordering::Acquire);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Keeps routing away for `wait`: the backend is busy, not broken.
    pub fn cool_down(&self, wait: Duration) {
        let until = now_ms() + wait.as_millis() as u64;
        self.cool_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// Whether routing may choose this backend now (read-only: takes no permit).
    pub fn is_usable(&self) -> bool {
        self.breaker.may_permit()
            && self.cooling().is_none()
            && self
                .max_inflight
                .is_none_or(|max| self.in_flight() < max.get())
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
