//! Rate limits: admit a request against its key's requests/min, tokens/min and concurrent
//! streams, all together or not at all, and settle it when it ends (refund or charge the
//! difference between reserved and used tokens, release the stream lease).
//!
//! The in-process limiter (`local`) is the default for one machine. Every limit is a token
//! bucket (`bucket`), so there is no window edge to burst across.

mod bucket;
pub mod headers;
mod local;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Limits;
use crate::error::GatewayError;
use crate::telemetry::metrics;

pub use local::LocalLimiter;
pub use redis::RedisLimiter;

use redis::SharedError;

/// The signed difference `reserved - used` (a refund when positive, a charge when negative),
/// saturating instead of wrapping whatever the two are.
pub fn refund(reserved: u64, used: u64) -> i64 {
    let difference = i128::from(reserved) - i128::from(used);
    i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX })
}

/// What a request asks of its key's limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub key_id: &'a Arc<str>,
    /// The key's tier, for metric labels.
    pub tier: &'a str,
    pub limits: &'a Limits,
    /// Tokens reserved: the prompt estimate plus the output cap.
    pub tokens: u64,
}

/// One limit as the `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// The request and token quotas of a key after an admission or a refusal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateState {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Streams,
}

/// Why a request was refused, with what the client should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: LimitKind,
    pub limit: u64,
    pub retry_after: Duration,
    /// The request can never fit: its reservation exceeds the whole per-minute budget.
    pub never_fits: bool,
    pub state: RateState,
}

/// An admitted request's claim on its key's limits, settled when the request ends.
#[derive(Debug)]
pub struct Admission {
    pub key_id: Arc<str>,
    pub limits: Limits,
    pub reserved_tokens: u64,
    pub lease: Option<u64>,
    pub state: RateState,
    pub decided_by: DecidedBy,
}

/// Which limiter took an admission, and so must settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The Redis script.
    Shared,
    /// The in-process limiter (the configured one, or the fallback while Redis is down).
    Local,
    /// Nobody: Redis was down and `on_error: allow`.
    Unmetered,
}

/// The configured limiter.
#[derive(Debug)]
pub enum Limiter {
    Local(LocalLimiter),
    Shared(Box<RedisLimiter>),
}

impl Limiter {
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Admission, GatewayError> {
        let refused = |refusal: Refusal| {
            metrics::record_rejection(ask.tier, refusal.kind);
            GatewayError::RateLimited(Box::new(refusal))
        };
        let admission = match self {
            Self::Local(local) => local.admit(ask).map_err(refused),
            Self::Shared(shared) => shared.admit(ask).await.map_err(|error| match error {
                SharedError::Refused(refusal) => refused(refusal),
                SharedError::Unavailable => GatewayError::LimiterUnavailable,
            }),
        }?;
        metrics::record_admission(ask.tier);
        Ok(admission)
    }

    /// Reconciles `used_tokens` against the reservation and releases the lease. Shared
    /// settlements run in a task of their own, off the request path.
    pub fn settle(self: &Arc<Self>, admission: Admission, used_tokens: u64) {
        let nothing_to_settle =
            admission.lease.is_none() && admission.limits.tokens_per_minute.is_none();
        match (&**self, admission.decided_by) {
            (_, DecidedBy::Unmetered) => {}
            _ if nothing_to_settle => {}
            (Self::Local(local), _) => local.settle(&admission, used_tokens),
            (Self::Shared(shared), _) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return;
                }
                let limiter = self.clone();
                shared.spawn(async move {
                    if let Self::Shared(shared) = &*limiter {
                        shared.settle(&admission, used_tokens).await;
                    }
                });
            }
        }
    }

    /// At shutdown, after the last request ended: waits (bounded) for settlements still
    /// running, so a deploy does not leave leases and reservations to expire on their own.
    pub async fn finish_settling(&self) {
        if let Self::Shared(shared) = self {
            // Two calls' worth: a flusher may owe a second round for what queued during its
            // first.
            shared.finish(redis::SETTLE_TIMEOUT * 2).await;
        }
    }

    /// Starts background work (Redis connections); call inside the runtime.
    pub async fn start(&self) {
        if let Self::Shared(shared) = self {
            shared.connect().await;
        }
    }

    /// Whether admission refuses everything while Redis is down (`on_error: deny`).
    pub fn denies_without_redis(&self) -> bool {
        matches!(self, Self::Shared(shared) if shared.denies_when_down())
    }

    /// The Redis pool and key prefix the limits use, for other state kept beside them.
    pub fn redis(&self) -> Option<(&fred::clients::Pool, &str)> {
        match self {
            Self::Local(_) => None,
            Self::Shared(shared) => Some(shared.pool_and_prefix()),
        }
    }

    /// `None` without Redis, else whether Redis is answering.
    pub fn redis_up(&self) -> Option<bool> {
        match self {
            Self::Local(_) => None,
            Self::Shared(shared) => Some(shared.is_up()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refund;

    #[test]
    fn refunds_saturate_instead_of_wrapping() {
        let rows = [
            (10, 3, 7),
            (3, 10, -7),
            (u64::MAX, 0, i64::MAX),
            (0, u64::MAX, i64::MIN),
            (u64::MAX, u64::MAX, 0),
        ];
        for (reserved, used, expected) in rows {
            assert_eq!(refund(reserved, used), expected, "{reserved} - {used}");
        }
    }
}
