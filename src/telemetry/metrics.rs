//! Metric names and typed recorders. Labels are low-cardinality by construction: tier names and
//! limit kinds come from the configuration, never from requests. Without an installed recorder
//! (the exporter arrives with the observability work) every call is a no-op.

use crate::limits::LimitKind;

pub const LIMIT_ADMISSIONS: &str = "sluicegate_limit_admissions_total";
pub const LIMIT_REJECTIONS: &str = "sluicegate_limit_rejections_total";

pub fn record_admission(tier: &str) {
    metrics::counter!(LIMIT_ADMISSIONS, "tier" => tier.to_owned()).increment(1);
}

pub fn record_rejection(tier: &str, kind: LimitKind) {
    let limit = match kind {
        LimitKind::Requests => "requests",
        LimitKind::Tokens => "tokens",
        LimitKind::Streams => "streams",
    };
    metrics::counter!(LIMIT_REJECTIONS, "tier" => tier.to_owned(), "limit" => limit).increment(1);
}

pub const BACKEND_BREAKER_STATE: &str = "sluicegate_backend_breaker_state";
pub const UPSTREAM_ERRORS: &str = "sluicegate_upstream_errors_total";

/// The breaker state of a backend: 0 closed, 1 open, 2 half-open.
pub fn record_breaker_state(backend: &str, state: u8) {
    metrics::gauge!(BACKEND_BREAKER_STATE, "backend" => backend.to_owned()).set(f64::from(state));
}

/// An upstream attempt failed; `kind` separates connect, first-byte, idle and total timeouts.
pub fn record_upstream_error(backend: &str, kind: &'static str) {
    metrics::counter!(UPSTREAM_ERRORS, "backend" => backend.to_owned(), "kind" => kind)
        .increment(1);
}

pub const UPSTREAM_RESENDS: &str = "sluicegate_upstream_resends_total";

/// A request was sent again on a fresh connection because its pooled one closed before the
/// backend could read it.
pub fn record_upstream_resend(backend: &str) {
    metrics::counter!(UPSTREAM_RESENDS, "backend" => backend.to_owned()).increment(1);
}
