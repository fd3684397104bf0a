//! Metric names, typed recorders and the Prometheus exporter. Labels are low-cardinality by
//! construction: tier, model and backend names come from the configuration, routes and limit
//! kinds are fixed sets; never a key id, a request id or user text. Recording is the `metrics`
//! facade (an atomic per series; the per-request series through thread-local handles,
//! `handles.rs`); rendering happens only when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::handles;

use crate::limits::LimitKind;

/// Buckets of every `*_seconds` histogram: fine enough below a millisecond to resolve what the
/// gateway itself adds, wide enough for whole answers.
const SECONDS_BUCKETS: [f64; 20] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

static EXPORTER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide exporter, installed as the `metrics` recorder on first use. If another
/// recorder was installed first, this one renders what it has (nothing).
pub fn exporter() -> &'static PrometheusHandle {
    EXPORTER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("invariant: the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        }
        handle
    })
}

/// Whether the Prometheus recorder was installed (handles may be kept from then on).
pub fn installed() -> bool {
    EXPORTER.get().is_some()
}

/// The Prometheus text exposition of every series.
pub fn render() -> String {
    exporter().render()
}

/// Periodic maintenance the exporter needs (histogram buffers drained) and the process
/// series (`process_resident_memory_bytes`, `process_open_fds`, `process_cpu_seconds_total`,
/// ...) refreshed; the server's housekeeping calls it every second.
pub fn upkeep() {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
    exporter().run_upkeep();
}

pub const BUILD_INFO: &str = "sluicegate_build_info";
pub const REQUESTS: &str = "sluicegate_requests_total";
pub const REQUEST_DURATION: &str = "sluicegate_request_duration_seconds";

/// One finished request: its route (a fixed name), its model (configured names only, empty
/// when there was none) and status.
pub fn record_request(route: &'static str, model: &str, status: StatusCode, took: Duration) {
    let labels = [
        ("route", route),
        ("model", model),
        ("status", status.as_str()),
    ];
    handles::count(REQUESTS, &labels, 1);
    handles::observe(REQUEST_DURATION, &labels[..2], took.as_secs_f64());
}

pub const LIMIT_ADMISSIONS: &str = "sluicegate_admissions_total";
pub const LIMIT_REJECTIONS: &str = "sluicegate_rate_limited_total";

pub fn record_admission(tier: &str) {
    handles::count(LIMIT_ADMISSIONS, &[("tier", tier)], 1);
}

pub fn record_rejection(tier: &str, kind: LimitKind) {
    let limit = match kind {
        LimitKind::Requests => "requests",
        LimitKind::Tokens => "tokens",
        LimitKind::Streams => "streams",
    };
    metrics::counter!(LIMIT_REJECTIONS, "tier" => tier.to_owned(), "limit" => limit).increment(1);
}

pub const BACKEND_BREAKER_STATE: &str = "sluicegate_breaker_state";
pub const UPSTREAM_ERRORS: &str = "sluicegate_upstream_errors_total";

/// The breaker state of a backend: 0 closed, 1 half-open, 2 open.
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

pub const UPSTREAM_ATTEMPTS: &str = "sluicegate_upstream_attempts_total";

/// One attempt on a backend ended with `outcome` (`success`, `failure` or `neutral`, as its
/// breaker counted it).
pub fn record_attempt(backend: &str, outcome: &'static str) {
    handles::count(
        UPSTREAM_ATTEMPTS,
        &[("backend", backend), ("outcome", outcome)],
        1,
    );
}

pub const HEDGES: &str = "sluicegate_hedges_total";

/// A hedge was sent to `backend`; `result` is `won` when its answer was used, else `lost`.
pub fn record_hedge(backend: &str, result: &'static str) {
    metrics::counter!(HEDGES, "backend" => backend.to_owned(), "result" => result).increment(1);
}

pub const STREAMS_OPEN: &str = "sluicegate_streams_open";
pub const CLIENT_DISCONNECTS: &str = "sluicegate_client_disconnects_total";
pub const HEARTBEATS: &str = "sluicegate_heartbeats_total";

/// A stream to a client opened (`+1`) or ended (`-1`).
pub fn record_stream_open(model: &str, delta: f64) {
    handles::add(STREAMS_OPEN, &[("model", model)], delta);
}

/// A client left before its answer was complete.
pub fn record_client_disconnect(model: &str) {
    metrics::counter!(CLIENT_DISCONNECTS, "model" => model.to_owned()).increment(1);
}

/// A heartbeat comment was sent while an upstream was slow to start.
pub fn record_heartbeat() {
    metrics::counter!(HEARTBEATS).increment(1);
}

pub const TOKENS: &str = "sluicegate_tokens_total";

/// Tokens of a request, as its upstream reported them or else as the gateway counted them:
/// `input` (prompt) and `output` (completion).
pub fn record_tokens(model: &str, tier: &str, input: u64, output: u64) {
    for (kind, n) in [("input", input), ("output", output)] {
        handles::count(
            TOKENS,
            &[("model", model), ("tier", tier), ("type", kind)],
            n,
        );
    }
}

pub const REDIS_CALLS: &str = "sluicegate_redis_calls_total";
pub const REDIS_DURATION: &str = "sluicegate_redis_duration_seconds";
pub const REDIS_UP: &str = "sluicegate_redis_up";

/// One call of a limiter script (`admit`, `settle`, `undo`): `ok`, `error` (an error reply) or
/// `unreachable` (a timeout or a broken connection), and how long it took.
pub fn record_redis_call(script: &'static str, result: &'static str, took: Duration) {
    let labels = [("script", script), ("result", result)];
    handles::count(REDIS_CALLS, &labels, 1);
    handles::observe(REDIS_DURATION, &labels[..1], took.as_secs_f64());
}

/// Whether the limiter's breaker lets calls through to Redis (1) or not (0).
pub fn record_redis_up(up: bool) {
    metrics::gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai_server_time_to_first_token_seconds";
pub const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai_server_time_per_output_token_seconds";

/// A streamed answer's time to its first token (from the request's arrival) and, when it had
/// more than one, the mean time between its output tokens (the OpenTelemetry GenAI server
/// metrics, in Prometheus spelling).
pub fn record_token_timing(model: &str, first: Duration, per_token: Option<Duration>) {
    let labels = [("model", model)];
    handles::observe(TIME_TO_FIRST_TOKEN, &labels, first.as_secs_f64());
    if let Some(per_token) = per_token {
        handles::observe(TIME_PER_OUTPUT_TOKEN, &labels, per_token.as_secs_f64());
    }
}

pub const OVERHEAD: &str = "sluicegate_overhead_seconds";

/// The gateway's own time in one answer of `model`: the time spent inside the handler's and
/// the response body's polls plus the admission's wait on Redis, which leaves out every wait on
/// the upstream and on the client socket.
pub fn record_overhead(model: &str, busy: Duration) {
    handles::observe(OVERHEAD, &[("model", model)], busy.as_secs_f64());
}

pub const TRACE_SPANS_DROPPED: &str = "sluicegate_trace_spans_dropped_total";

/// Finished spans that were not exported: `queue_full` (the collector is slower than the
/// traffic) or `export_failed` (the collector refused them or could not be reached).
pub fn record_spans_dropped(reason: &'static str, spans: u64) {
    metrics::counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(spans);
}

pub const JWKS_READS: &str = "sluicegate_jwks_reads_total";

/// The JWKS file was read again after it changed: `ok`, or `error` (the keys in use stay).
pub fn record_jwks_read(result: &'static str) {
    metrics::counter!(JWKS_READS, "result" => result).increment(1);
}
