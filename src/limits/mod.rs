//! Rate limits: admit a request against its key's requests/min, tokens/min and concurrent
//! streams, all together or not at all, and settle it when it ends (refund or charge the
//! difference between reserved and used tokens, release the stream lease).
//!
//! The in-process limiter (`local`) is the default for one machine. Every limit is a token
//! bucket (`bucket`), so there is no window edge to burst across.

mod bucket;
pub mod headers;
mod local;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Limits;
use crate::error::GatewayError;

pub use local::LocalLimiter;

/// What a request asks of its key's limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub key_id: &'a Arc<str>,
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
}

/// The configured limiter.
#[derive(Debug)]
pub enum Limiter {
    Local(LocalLimiter),
}

impl Limiter {
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Admission, GatewayError> {
        let result = match self {
            Self::Local(local) => local.admit(ask),
        };
        result.map_err(|refusal| GatewayError::RateLimited(Box::new(refusal)))
    }

    /// Reconciles `used_tokens` against the reservation and releases the lease.
    pub fn settle(&self, admission: Admission, used_tokens: u64) {
        match self {
            Self::Local(local) => local.settle(&admission, used_tokens),
        }
    }
}
