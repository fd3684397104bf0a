//! A small breaker over Redis calls: open after consecutive failures to reach Redis, then one
//! probe a second. Only unavailability feeds it (a timeout, a broken connection); an error
//! *reply* means Redis answered, so it never does.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::metrics;

/// Consecutive failures that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker waits between probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    next_probe_ms: AtomicU64,
    started: Instant,
}

impl Health {
    pub fn new() -> Self {
        metrics::record_redis_up(true);
        Self {
            failures: AtomicU32::new(0),
            next_probe_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_up(&self) -> bool {
        self.failures.load(Ordering::Acquire) < FAILURES_TO_OPEN
    }

    /// Whether to call Redis now: always while closed; while open, once per probe interval.
    pub fn allow(&self) -> bool {
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
                    now.saturating_add(PROBE_EVERY.as_millis() as u64),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    pub fn succeeded(&self) {
        if self.failures.swap(0, Ordering::AcqRel) >= FAILURES_TO_OPEN {
            metrics::record_redis_up(true);
        }
    }

    pub fn failed(&self) {
        let failures = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        if failures == FAILURES_TO_OPEN {
            metrics::record_redis_up(false);
            self.next_probe_ms.store(
                self.now_ms().saturating_add(PROBE_EVERY.as_millis() as u64),
                Ordering::Release,
            );
        }
    }
}
