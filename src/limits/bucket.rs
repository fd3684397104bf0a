//! Token-bucket arithmetic shared by the in-process limiter and (mirrored line for line) the
//! Redis script `redis/admit.lua`.
//!
//! A bucket holds at most `capacity` units (the per-minute limit) and refills continuously at
//! `capacity` per minute. A request takes its cost if the bucket holds that much. There are no
//! window edges, so no 2x burst at a boundary; the bound is that any interval of length `t`
//! admits at most `capacity * (1 + t / 1 min)` units: a full bucket plus what refilled meanwhile.
//! Refunds put units back (never above capacity); extra charges may take the level below zero,
//! which later requests then wait out.

/// One minute, the window every limit is expressed in.
pub const WINDOW_MS: f64 = 60_000.0;

/// A bucket's state at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub level: f64,
    pub at_ms: u64,
}

/// The result of asking a bucket for `cost` units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// Enough units: this is the bucket after taking them.
    Granted(Bucket),
    /// Not enough yet: retry after this many milliseconds.
    Wait { retry_after_ms: u64 },
    /// The cost exceeds the capacity: it will never fit.
    Never,
}

impl Bucket {
    pub fn full(capacity: u64, now_ms: u64) -> Self {
        Self {
            level: capacity as f64,
            at_ms: now_ms,
        }
    }

    /// The bucket at `now_ms`, refilled for the time since it was last seen.
    pub fn refilled(self, capacity: u64, now_ms: u64) -> Self {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64;
        let level = (self.level + elapsed * capacity as f64 / WINDOW_MS).min(capacity as f64);
        Self {
            level,
            at_ms: now_ms.max(self.at_ms),
        }
    }

    pub fn take(self, capacity: u64, cost: u64, now_ms: u64) -> Take {
        if cost > capacity {
            return Take::Never;
        }
        let bucket = self.refilled(capacity, now_ms);
        let cost = cost as f64;
        if bucket.level >= cost {
            return Take::Granted(Self {
                level: bucket.level - cost,
                ..bucket
            });
        }
        let missing = cost - bucket.level;
        Take::Wait {
            retry_after_ms: (missing * WINDOW_MS / capacity as f64).ceil() as u64,
        }
    }

    /// Adds `units` back (a refund) or, when negative, takes them (a late charge).
    pub fn adjust(self, capacity: u64, units: i64, now_ms: u64) -> Self {
        let bucket = self.refilled(capacity, now_ms);
        Self {
            level: (bucket.level + units as f64).min(capacity as f64),
            ..bucket
        }
    }

    /// Whole units left, as the `x-ratelimit-remaining-*` headers report them.
    pub fn remaining(&self) -> u64 {
        self.level.max(0.0).floor() as u64
    }

    /// Milliseconds until the bucket is full again (`x-ratelimit-reset-*`).
    pub fn reset_ms(&self, capacity: u64) -> u64 {
        let missing = capacity as f64 - self.level;
        (missing.max(0.0) * WINDOW_MS / capacity as f64).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_refills_and_waits() {
        let cap = 10;
        let mut bucket = Bucket::full(cap, 0);
        for i in 0..10 {
            bucket = match bucket.take(cap, 1, 0) {
                Take::Granted(b) => b,
                other => panic!("request {i} should pass, got {other:?}"),
            };
        }
        assert_eq!(
            bucket.take(cap, 1, 0),
            Take::Wait {
                retry_after_ms: 6000
            },
            "one unit refills in 6 s"
        );
        assert_eq!(
            bucket.take(cap, 1, 3000),
            Take::Wait {
                retry_after_ms: 3000
            }
        );
        assert!(matches!(bucket.take(cap, 1, 6000), Take::Granted(_)));
        assert_eq!(bucket.take(cap, 11, 0), Take::Never);
    }

    #[test]
    fn headers_and_adjustments() {
        let rows: [(f64, i64, u64, u64); 4] = [
            // (level before, adjustment, remaining after, reset ms after) with capacity 100
            (50.0, 30, 80, 12_000),
            (50.0, 80, 100, 0),
            (50.0, -70, 0, 72_000),
            (0.5, 0, 0, 59_700),
        ];
        for (level, units, remaining, reset) in rows {
            let bucket = Bucket { level, at_ms: 0 }.adjust(100, units, 0);
            assert_eq!(
                (bucket.remaining(), bucket.reset_ms(100)),
                (remaining, reset),
                "{level} {units:+}"
            );
        }
    }

    #[test]
    fn a_debt_is_waited_out() {
        let bucket = Bucket {
            level: -20.0,
            at_ms: 0,
        };
        assert_eq!(
            bucket.take(60, 10, 0),
            Take::Wait {
                retry_after_ms: 30_000
            }
        );
        assert!(matches!(bucket.take(60, 10, 30_000), Take::Granted(_)));
    }
}
