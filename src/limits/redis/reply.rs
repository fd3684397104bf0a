//! What a Redis call came back with: the admission script's reply turned into an admission or
//! a refusal, and a failed call sorted into "Redis did not answer" (which feeds the breaker and
//! may have been applied) or "Redis answered with an error" (a bug or a bad argument: it
//! changed nothing and says nothing about Redis' health).

use std::time::Duration;

use fred::error::{Error, ErrorKind};

use super::super::{Admission, Ask, DecidedBy, LimitKind, Quota, RateState, Refusal};

/// How a call that did not return a usable reply failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer in time, or the connection failed: the command may or may not have run.
    Unreachable,
    /// Redis answered with an error, or with a reply of the wrong shape: nothing was applied.
    Rejected,
}

impl Failure {
    /// The `result` label of the Redis call metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Rejected => "error",
        }
    }
}

/// Sorts a fred error. Error replies from the server arrive as `Unknown` and its relatives;
/// a server that is loading, busy or out of memory is treated as unreachable, as is anything
/// about the connection itself.
pub fn classify(error: &Error) -> Failure {
    const UNAVAILABLE_REPLIES: [&str; 7] = [
        "LOADING",
        "BUSY",
        "OOM",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "CLUSTERDOWN",
    ];
    match error.kind() {
        ErrorKind::Unknown
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand
        | ErrorKind::Parse
        | ErrorKind::NotFound => {
            let details = error.details();
            if UNAVAILABLE_REPLIES.iter().any(|p| details.starts_with(p)) {
                Failure::Unreachable
            } else {
                Failure::Rejected
            }
        }
        _ => Failure::Unreachable,
    }
}

/// Turns the admission script's reply into an admission or a refusal.
pub fn decide(reply: [i64; 8], ask: Ask<'_>, id: Option<u64>) -> Result<Admission, Refusal> {
    let [
        status,
        kind,
        limit,
        retry_ms,
        req_remaining,
        req_reset,
        tok_remaining,
        tok_reset,
    ] = reply;
    let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
    let quota = |limit: Option<u64>, remaining: i64, reset: i64| {
        limit.map(|limit| Quota {
            limit,
            remaining: non_negative(remaining),
            reset: Duration::from_millis(non_negative(reset)),
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
            lease: id,
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
        limit: non_negative(limit),
        retry_after: Duration::from_millis(non_negative(retry_ms)),
        never_fits: status == -1,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_not_unavailability() {
        let rows = [
            (
                ErrorKind::Unknown,
                "ERR sluicegate admit: argument 3 must be a non-negative integer",
                Failure::Rejected,
            ),
            (
                ErrorKind::Unknown,
                "ERR user_script:1: Script attempted to access nonexistent global variable",
                Failure::Rejected,
            ),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                Failure::Rejected,
            ),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
                Failure::Unreachable,
            ),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'",
                Failure::Unreachable,
            ),
            (
                ErrorKind::Timeout,
                "Request timed out.",
                Failure::Unreachable,
            ),
            (
                ErrorKind::IO,
                "Connection reset by peer",
                Failure::Unreachable,
            ),
            (ErrorKind::Canceled, "Canceled.", Failure::Unreachable),
        ];
        for (kind, details, expected) in rows {
            assert_eq!(classify(&Error::new(kind, details)), expected, "{details}");
        }
    }
}
