//! `RequestGuard`: what must happen when a request ends, however it ends (success, error,
//! client disconnect, shutdown), done in `Drop`: release the concurrency permit and write the
//! one access-log line. The guard rides inside the response body, so it drops when hyper is
//! done with the body, not when the handler returns.

mod body;
mod stall;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::body::Body;
use crate::error::{Blame, GatewayError};
use crate::limits::{Admission, Limiter};
use crate::openai::chunk::MeterSlot;
use crate::openai::tokens::TokenCounter;
use crate::openai::{Metering, Reservation, Usage};
use crate::request_id::RequestId;
use crate::telemetry::metrics;
use crate::telemetry::traces::{StepSpan, TraceCx};
use crate::telemetry::usage::UsageLedger;
use body::GuardedBody;
use opentelemetry::KeyValue;

pub use stall::StallWatch;

/// Which backend answered and how it was reached, recorded once.
pub type BackendSlot = Arc<OnceLock<Served>>;

/// The backend that answered, the calls it took (hedges included) and whether one was a hedge.
#[derive(Debug, Clone)]
pub struct Served {
    pub backend: Arc<str>,
    pub attempts: u32,
    pub hedged: bool,
}

/// The kind and blame of a failure, recorded once.
pub type FailureSlot = Arc<OnceLock<(&'static str, Blame)>>;

#[derive(Debug)]
pub struct RequestGuard {
    request_id: RequestId,
    /// The client's address (behind trusted proxies, the one they forwarded).
    client: Option<std::net::IpAddr>,
    method: Method,
    path: String,
    route: &'static str,
    started: Instant,
    status: StatusCode,
    key_id: Option<Arc<str>>,
    tier: Option<String>,
    model: Option<String>,
    stream_open: bool,
    backend: BackendSlot,
    stream: bool,
    /// Time spent inside the handler's and the body's polls: the gateway's own work.
    busy: std::time::Duration,
    /// Written by the body that carries the guard.
    bytes_out: u64,
    completed: bool,
    metering: MeterSlot,
    settlement: Option<Settlement>,
    failure: FailureSlot,
    trace: TraceCx,
    /// The span of the stream to the client, from its first event to its end.
    stream_span: Option<StepSpan>,
    /// Where the key's usage is totalled, once the request was admitted.
    usage: Option<Arc<UsageLedger>>,
    /// The request body and how to count its prompt, should no usage arrive.
    prompt: Option<KeptPrompt>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl RequestGuard {
    /// `route` names the route in metrics (a fixed set).
    pub fn start(
        request_id: RequestId,
        method: Method,
        path: &str,
        route: &'static str,
        trace: TraceCx,
    ) -> Self {
        Self {
            request_id,
            client: None,
            method,
            path: path.chars().take(256).collect(),
            route,
            started: Instant::now(),
            status: StatusCode::OK,
            key_id: None,
            tier: None,
            model: None,
            stream_open: false,
            backend: BackendSlot::default(),
            stream: false,
            busy: std::time::Duration::ZERO,
            bytes_out: 0,
            completed: false,
            metering: MeterSlot::default(),
            settlement: None,
            failure: FailureSlot::default(),
            trace,
            stream_span: None,
            prompt: None,
            usage: None,
            _permit: None,
        }
    }

    /// Adds time the gateway spent working on this request (not waiting on anyone).
    pub fn add_busy(&mut self, busy: std::time::Duration) {
        self.busy = self.busy.saturating_add(busy);
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self._permit = Some(permit);
    }

    pub fn set_client(&mut self, client: std::net::IpAddr) {
        self.client = Some(client);
    }

    pub fn set_key(&mut self, key_id: Arc<str>) {
        self.key_id = Some(key_id);
    }

    /// The caller's tier, for the token metrics.
    pub fn set_tier(&mut self, tier: &str) {
        self.tier = Some(tier.to_owned());
    }

    /// Adds the request to its key's usage totals in `ledger` when it ends.
    pub fn total_usage_in(&mut self, ledger: Arc<UsageLedger>) {
        self.usage = Some(ledger);
    }

    /// Keeps the request `body` so its prompt can be counted with `counter` should the upstream
    /// report no usage (the count happens only then, when the request ends). A body larger
    /// than `MAX_KEPT_PROMPT_BYTES` is not kept (its prompt estimate stands in), so an open
    /// stream never holds more than that of its request.
    pub fn count_prompt_with(&mut self, body: &Bytes, counter: TokenCounter, count: PromptCount) {
        if body.len() <= MAX_KEPT_PROMPT_BYTES {
            // A copy of exactly its size: the body may be a slice of the connection's read
            // buffer, which a long stream must not keep alive.
            self.prompt = Some(KeptPrompt {
                body: Bytes::copy_from_slice(body),
                counter,
                count,
            });
        }
    }

    /// The request's trace, for its steps' spans and the upstream's `traceparent`.
    pub fn trace(&self) -> &TraceCx {
        &self.trace
    }

    /// A stream to the client has begun; it counts as open until the guard drops.
    pub fn mark_stream_open(&mut self) {
        self.stream_span = Some(self.trace.step("stream"));
        if let Some(model) = &self.model {
            metrics::record_stream_open(model, 1.0);
            self.stream_open = true;
        }
    }

    pub fn set_route(&mut self, model: &str, stream: bool) {
        self.model = Some(model.to_owned());
        self.stream = stream;
    }

    /// Set once by whichever attempt got a backend's answer.
    pub fn backend_slot(&self) -> BackendSlot {
        self.backend.clone()
    }

    /// The backend that answered, once known.
    pub fn backend(&self) -> Option<Arc<str>> {
        self.backend.get().map(|served| served.backend.clone())
    }

    /// Shared with the response rewriter, which leaves what was generated in it.
    pub fn meter_slot(&self) -> MeterSlot {
        self.metering.clone()
    }

    /// Settles `admission`, which reserved `reserved`, with `limiter` when the request ends.
    pub fn settle_with(
        &mut self,
        limiter: Arc<Limiter>,
        admission: Admission,
        reserved: Reservation,
    ) {
        self.settlement = Some(Settlement {
            limiter,
            admission,
            reserved,
            dispatched: false,
        });
    }

    /// The request is about to go upstream: from here a backend may spend work on its prompt,
    /// so a client that leaves before any answer is still charged the prompt estimate.
    pub fn mark_dispatched(&mut self) {
        if let Some(settlement) = &mut self.settlement {
            settlement.dispatched = true;
        }
    }

    /// Shared with a stream, which records a failure that happened after the first byte.
    pub fn failure_slot(&self) -> FailureSlot {
        self.failure.clone()
    }

    pub fn record_failure(&self, error: &GatewayError) {
        let _ = self.failure.set((error.kind(), error.blame()));
    }

    /// Wraps a response body so this guard settles when the body is finished or dropped. A
    /// stream given `stalls` is also watched: cut after the stall timeout once its client stops
    /// taking frames, which matters where no socket write stalls (an HTTP/2 stream whose window
    /// stays shut; over HTTP/1.1 the connection's own stall timeout sees it).
    pub fn attach(mut self, status: StatusCode, body: Body, stalls: Option<&StallWatch>) -> Body {
        self.status = status;
        let stream = self.stream;
        let (body, shared) = GuardedBody::new(body, self);
        if let Some(stalls) = stalls.filter(|_| stream) {
            stalls.watch(&shared);
        }
        Body::new(body)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut metering: Metering = *self.metering.lock().unwrap_or_else(|p| p.into_inner());
        if self.prompt_count_needed(&metering) {
            // Bounded work (a body of at most `MAX_KEPT_PROMPT_BYTES`), done only when no usage
            // was reported.
            metering.counted_prompt = self
                .prompt
                .take()
                .and_then(|kept| (kept.count)(&kept.body, kept.counter));
        }
        let accounted = metering.accounted(self.settlement.as_ref().map(|s| &s.reserved));
        if let Some(settlement) = self.settlement.take() {
            let used = settlement.used_tokens(&metering, self.failure.get().is_some());
            settlement.limiter.settle(settlement.admission, used);
        }
        let usage = accounted.map(|(usage, _)| usage);
        self.end_trace(&metering, usage);
        if let (Some(ledger), Some(key_id)) = (&self.usage, &self.key_id) {
            ledger.record(key_id, usage);
        }
        let failure = self.failure.get();
        self.record_metrics(&metering, usage);
        tracing::info!(
            target: "sluicegate::access",
            request_id = %self.request_id,
            client_addr = self.client.map(tracing::field::display),
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            key_id = self.key_id.as_deref(),
            model = self.model.as_deref(),
            backend = self.backend.get().map(|s| &*s.backend),
            attempts = self.backend.get().map(|s| s.attempts),
            hedged = self.backend.get().is_some_and(|s| s.hedged),
            stream = self.stream,
            trace_id = self.trace.trace_id(),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_out = self.bytes_out,
            client_closed = !self.completed,
            ttft_ms = metering
                .first_token_at
                .map(|at| at.saturating_duration_since(self.started).as_secs_f64() * 1000.0),
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            usage_source = accounted.map(|(_, source)| source.as_str()),
            error_kind = failure.map(|f| f.0),
            blame = failure.map(|f| format!("{:?}", f.1).to_lowercase()),
            "request"
        );
    }
}

impl RequestGuard {
    /// Whether the prompt must be counted: no usage was reported, and something will be
    /// charged or logged for it (an answer was counted, chunks went out, or the client left a
    /// request the backend was already working on).
    fn prompt_count_needed(&self, metering: &Metering) -> bool {
        !metering.reported
            && self.prompt.is_some()
            && (metering.counted_completion.is_some()
                || metering.chunks > 0
                || self
                    .settlement
                    .as_ref()
                    .is_some_and(|s| s.dispatched && self.failure.get().is_none()))
    }

    /// Ends the stream's and the request's spans with what the access log says, in the
    /// OpenTelemetry GenAI attributes where one exists.
    fn end_trace(&mut self, metering: &Metering, usage: Option<Usage>) {
        // The stream's span ends before the request's, whatever was counted.
        let stream_span = self.stream_span.take();
        if !self.trace.is_on() {
            return;
        }
        if let (Some(span), Some(usage)) = (stream_span, usage) {
            span.record(KeyValue::new(
                "sluicegate.chunks",
                clamp_i64(metering.chunks),
            ));
            span.record(KeyValue::new(
                "gen_ai.usage.output_tokens",
                clamp_i64(usage.completion_tokens),
            ));
        }
        let mut attributes = vec![KeyValue::new(
            "sluicegate.request_id",
            self.request_id.as_arc().to_string(),
        )];
        if let Some(key_id) = &self.key_id {
            attributes.push(KeyValue::new("sluicegate.key_id", key_id.to_string()));
        }
        if let Some(tier) = &self.tier {
            attributes.push(KeyValue::new("sluicegate.tier", tier.clone()));
        }
        if let Some(model) = &self.model {
            attributes.extend([
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", model.clone()),
                KeyValue::new("gen_ai.response.model", model.clone()),
                KeyValue::new("sluicegate.stream", self.stream),
            ]);
        }
        if let Some(served) = self.backend.get() {
            attributes.extend([
                KeyValue::new("sluicegate.backend", served.backend.to_string()),
                KeyValue::new("sluicegate.attempts", i64::from(served.attempts)),
                KeyValue::new("sluicegate.hedged", served.hedged),
            ]);
        }
        if let Some(usage) = usage {
            attributes.extend([
                KeyValue::new("gen_ai.usage.input_tokens", clamp_i64(usage.prompt_tokens)),
                KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    clamp_i64(usage.completion_tokens),
                ),
            ]);
        }
        self.trace.record(attributes);
        self.trace
            .end(self.status.as_u16(), self.failure.get().map(|f| f.0));
    }

    /// The request's series: its count and duration, and for a model's answer the stream that
    /// closes, the client that left early and the tokens reported.
    fn record_metrics(&self, metering: &Metering, usage: Option<Usage>) {
        let model = self.model.as_deref().unwrap_or_default();
        metrics::record_request(self.route, model, self.status, self.started.elapsed());
        if self.model.is_none() {
            return;
        }
        metrics::record_overhead(model, self.busy);
        if self.stream_open {
            metrics::record_stream_open(model, -1.0);
        }
        if !self.completed {
            metrics::record_client_disconnect(model);
        }
        if let Some(first) = metering.first_token_at {
            let output = match metering.usage {
                Some(usage) if metering.reported => usage.completion_tokens,
                _ => metering.chunks,
            };
            let per_token = metering.last_token_at.filter(|_| output > 1).map(|last| {
                last.saturating_duration_since(first)
                    / output.saturating_sub(1).min(u64::from(u32::MAX)) as u32
            });
            metrics::record_token_timing(
                model,
                first.saturating_duration_since(self.started),
                per_token,
            );
        }
        if let (Some(usage), Some(tier)) = (usage, &self.tier) {
            metrics::record_tokens(model, tier, usage.prompt_tokens, usage.completion_tokens);
        }
    }
}

/// How a kept request body's prompt is counted (`None` when it no longer parses).
pub type PromptCount = fn(&[u8], TokenCounter) -> Option<u64>;

/// A request body kept to count its prompt, should no usage arrive.
#[derive(Debug)]
struct KeptPrompt {
    body: Bytes,
    counter: TokenCounter,
    count: PromptCount,
}

/// The largest request body kept for counting its prompt when no usage is reported.
const MAX_KEPT_PROMPT_BYTES: usize = 64 * 1024;

/// A count as an OpenTelemetry integer attribute.
fn clamp_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// What settling an admitted request needs.
#[derive(Debug)]
struct Settlement {
    limiter: Arc<Limiter>,
    admission: Admission,
    reserved: Reservation,
    /// The request was handed to the upstream.
    dispatched: bool,
}

impl Settlement {
    /// What to charge: what was metered; when nothing was, the prompt estimate if the request
    /// reached a backend and ended without a failure (the client left while it was being
    /// answered), so abandoning requests does not escape the tokens-per-minute limit.
    fn used_tokens(&self, metering: &Metering, failed: bool) -> u64 {
        match metering.used_tokens(&self.reserved) {
            0 if self.dispatched && !failed => metering
                .counted_prompt
                .unwrap_or(self.reserved.usage.prompt_tokens)
                .min(self.reserved.prompt_ceiling),
            used => used,
        }
    }
}
