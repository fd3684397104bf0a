//! What routing knows about one backend: its weight and in-flight cap, how many requests it has
//! in flight, its circuit breaker, a cool-down after it answered 429, and how quickly it
//! usually sends its first bytes (to judge attempts abandoned before them).

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::{Breaker, BreakerState, Outcome};
use crate::config::{BackendConfig, BreakerConfig};

/// An attempt abandoned before its first byte counts against the backend once it waited this
/// many times the backend's usual time to first byte...
const ABANDONED_SLOWNESS_FACTOR: u64 = 4;
/// ...and at least this long, so a client that leaves at once says nothing...
const MIN_ABANDONED_WAIT: Duration = Duration::from_secs(1);
/// ...and at least this share of the first-byte timeout, so clients that give up on slow
/// prompts (or a client doing it on purpose) cannot easily open a healthy backend's circuit.
const ABANDONED_TIMEOUT_DIVISOR: u32 = 4;

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
    /// Moving average of the time to first byte, in microseconds; 0 until one arrived.
    first_byte_avg_us: AtomicU64,
    /// What an attempt waits at most for its first byte.
    first_byte_timeout: Duration,
}

impl BackendHealth {
    pub fn new(
        config: &BackendConfig,
        breaker: &BreakerConfig,
        first_byte_timeout: Duration,
    ) -> Self {
        Self {
            weight: config.weight,
            max_inflight: config.max_inflight,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            breaker: Breaker::new(breaker, &config.name),
            cool_until_ms: AtomicU64::new(0),
            first_byte_avg_us: AtomicU64::new(0),
            first_byte_timeout,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A request starts, unless the backend is at its in-flight cap; the check and the count
    /// are one atomic step, so concurrent requests cannot exceed the cap. Pair with `leave`
    /// (the `Attempt` in `pool.rs` does).
    pub fn try_enter(&self) -> bool {
        let max = self.max_inflight.map_or(usize::MAX, NonZeroUsize::get);
        let entered = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if entered {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        entered
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
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let until = now_ms().saturating_add(wait_ms);
        self.cool_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// Notes how long an attempt waited for its first bytes (a moving average of 1/8 weight).
    pub fn first_byte_after(&self, waited: Duration) {
        let sample = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .first_byte_avg_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |avg| {
                Some(match avg {
                    0 => sample,
                    avg => avg - avg / 8 + sample / 8,
                })
            });
    }

    /// What an attempt abandoned after waiting `waited` without a first byte (its client left,
    /// or its hedge won elsewhere) says about the backend: nothing, unless it waited far longer
    /// than this backend usually takes, and at least a quarter of the first-byte timeout. So a
    /// blackholed backend whose clients all give up before the first-byte timeout still opens
    /// its circuit, while clients leaving a healthy backend early do not count against it.
    /// Before any first byte was seen, half the first-byte timeout is the bar.
    pub fn abandoned_after(&self, waited: Duration) -> Outcome {
        let usual = Duration::from_micros(self.first_byte_avg_us.load(Ordering::Acquire));
        let bar = if usual.is_zero() {
            self.first_byte_timeout / 2
        } else {
            usual
                .saturating_mul(ABANDONED_SLOWNESS_FACTOR as u32)
                .max(MIN_ABANDONED_WAIT)
                .max(self.first_byte_timeout / ABANDONED_TIMEOUT_DIVISOR)
        };
        if waited >= bar {
            Outcome::Failure
        } else {
            Outcome::Neutral
        }
    }

    /// Whether routing may choose this backend now (read-only: takes no permit; `try_enter`
    /// makes the in-flight cap exact).
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
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}
