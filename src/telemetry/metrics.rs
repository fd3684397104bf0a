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
