//! Distributed traces: W3C `traceparent`/`tracestate` taken from clients and passed on to
//! upstreams, and, when `telemetry.otlp_endpoint` is set, spans exported over OTLP/HTTP
//! (protobuf) with the OpenTelemetry GenAI attributes.
//!
//! Export never touches the request path: a finished span goes into a bounded queue that a
//! dedicated thread drains in batches; when the queue is full the span is dropped and counted
//! (`sluicegate_trace_spans_dropped_total`), so a slow or dead collector costs requests nothing.
//! Without an endpoint no span is made at all, and the caller's context is passed on to the
//! backend (re-encoded by the propagator; a malformed `tracestate` is dropped), so the caller's
//! trace still joins up.
//!
//! Invariant: no span carries prompt or completion text, a key, a token or a digest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};

use super::metrics;
use crate::config::TracesConfig;

/// The span pipeline, built when `telemetry.otlp_endpoint` is set.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Why the OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP trace exporter: {0}")]
pub struct ExporterError(#[from] opentelemetry_otlp::ExporterBuildError);

impl Tracing {
    pub fn start(config: &TracesConfig) -> Result<Self, ExporterError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.as_str())
            .with_timeout(config.export_timeout)
            .build()?;
        let queued = Arc::new(AtomicUsize::new(0));
        let batches = BatchSpanProcessor::builder(CountedExporter {
            inner: exporter,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.queue_size)
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedQueue {
                inner: batches,
                queued,
                capacity: config.queue_size,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name("sluicegate")
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sluicegate");
        Ok(Self { provider, tracer })
    }

    /// Exports what is queued, within `timeout`; spans that end later are not exported.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "trace export did not finish at shutdown");
        }
    }
}

/// A request's place in a trace: the caller's context from `traceparent`, plus the gateway's
/// own span when tracing is on. Cheap to clone; empty when neither applies.
#[derive(Debug, Clone, Default)]
pub struct TraceCx {
    cx: Context,
    tracer: Option<SdkTracer>,
}

/// What an attempt's span reports when it ends.
pub type AttemptOutcome = &'static str;

impl TraceCx {
    /// Continues the caller's trace (or starts one) with the gateway's server span named
    /// `{method} {route}` when `tracing` is on.
    pub fn start_request(
        tracing: Option<&Tracing>,
        headers: &HeaderMap,
        method: &str,
        route: &'static str,
    ) -> Self {
        let parent = if headers.contains_key("traceparent") {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let Some(tracing) = tracing else {
            return Self {
                cx: parent,
                tracer: None,
            };
        };
        // The conventions' name for methods outside the standard set (bounded span names).
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "CONNECT"
            | "TRACE" => method,
            _ => "_OTHER",
        };
        let span = tracing
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route),
            ])
            .start_with_context(&tracing.tracer, &parent);
        Self {
            cx: parent.with_span(span),
            tracer: Some(tracing.tracer.clone()),
        }
    }

    /// Whether the gateway makes spans (tracing is on).
    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// The trace id for the access log, when the request is part of a trace.
    pub fn trace_id(&self) -> Option<String> {
        let context = self.cx.span().span_context().clone();
        context.is_valid().then(|| context.trace_id().to_string())
    }

    /// Adds attributes to the gateway's span (nothing without one).
    pub fn record(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if self.tracer.is_some() {
            self.cx.span().set_attributes(attributes);
        }
    }

    /// Ends the gateway's span with the response status; a 5xx marks it failed.
    pub fn end(&self, status: u16, error_kind: Option<&'static str>) {
        if self.tracer.is_none() {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(kind) = error_kind {
            span.set_attribute(KeyValue::new("error.type", kind));
        }
        if status >= 500 {
            span.set_status(Status::error(error_kind.unwrap_or("server error")));
        }
        span.end();
    }

    /// An internal step of the request (`auth`, `admission`, `stream`), ended when dropped.
    pub fn step(&self, name: &'static str) -> StepSpan {
        StepSpan(self.child(name, SpanKind::Internal, Vec::new()))
    }

    /// The span of one call to a backend, named `chat {upstream model}` as the GenAI
    /// conventions name a client call; its context is what the backend receives.
    pub fn attempt(&self, backend: &str, upstream_model: &str, number: u32) -> AttemptSpan {
        let cx = if self.tracer.is_some() {
            let attributes = vec![
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.request.model", upstream_model.to_owned()),
                KeyValue::new("sluicegate.backend", backend.to_owned()),
                KeyValue::new("sluicegate.attempt", i64::from(number)),
            ];
            self.child_named(
                format!("chat {upstream_model}"),
                SpanKind::Client,
                attributes,
            )
        } else {
            self.cx.clone()
        };
        AttemptSpan { cx, outcome: None }
    }

    /// The `traceparent` (and `tracestate`) a backend receives: the attempt's span when tracing
    /// is on, the caller's own otherwise, nothing when the request is in no trace.
    fn headers(cx: &Context) -> TraceHeaders {
        let mut headers = TraceHeaders::default();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(cx, &mut headers);
        }
        headers
    }

    fn child(&self, name: &'static str, kind: SpanKind, attributes: Vec<KeyValue>) -> Context {
        self.child_named(name.into(), kind, attributes)
    }

    fn child_named(&self, name: String, kind: SpanKind, attributes: Vec<KeyValue>) -> Context {
        let Some(tracer) = &self.tracer else {
            return self.cx.clone();
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        self.cx.with_span(span)
    }
}

/// A step's span; it ends when dropped.
#[derive(Debug)]
pub struct StepSpan(Context);

impl StepSpan {
    pub fn record(&self, attribute: KeyValue) {
        self.0.span().set_attribute(attribute);
    }
}

impl Drop for StepSpan {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// One upstream call's span. It ends when dropped, with the outcome set by `finish` or, for a
/// call abandoned first (a hedge that lost, a client that left), `cancelled`.
#[derive(Debug)]
pub struct AttemptSpan {
    cx: Context,
    outcome: Option<AttemptOutcome>,
}

impl AttemptSpan {
    /// The headers that carry this call's trace context to the backend.
    pub fn headers(&self) -> TraceHeaders {
        TraceCx::headers(&self.cx)
    }

    /// `answered`, or the kind of the error that ended the call.
    pub fn finish(&mut self, outcome: AttemptOutcome, failed: bool) {
        self.outcome = Some(outcome);
        if failed {
            self.cx.span().set_status(Status::error(outcome));
            self.cx
                .span()
                .set_attribute(KeyValue::new("error.type", outcome));
        }
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new(
            "sluicegate.outcome",
            Value::from(self.outcome.unwrap_or("cancelled")),
        ));
        span.end();
    }
}

/// `traceparent` and `tracestate`, ready to write on an upstream request.
#[derive(Debug, Clone, Default)]
pub struct TraceHeaders {
    pub traceparent: Option<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
}

impl TraceHeaders {
    /// The headers present, as (name, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (HeaderName, &HeaderValue)> {
        [
            (HeaderName::from_static("traceparent"), &self.traceparent),
            (HeaderName::from_static("tracestate"), &self.tracestate),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| (name, value)))
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        let Ok(value) = HeaderValue::try_from(value) else {
            return;
        };
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Bounds the spans waiting for export and counts the ones it drops. The batch processor's own
/// queue drops silently; this one is sized the same and counts spans out as the exporter takes
/// them, so it is full first and every drop is seen.
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::record_spans_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing queue room as batches leave and counting failed exports.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            metrics::record_spans_dropped("export_failed", spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_parent(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_str(value).expect("test value is a valid header"),
        );
        headers.insert("tracestate", HeaderValue::from_static("vendor=1"));
        headers
    }

    #[test]
    fn without_tracing_the_callers_context_is_forwarded_unchanged() {
        let trace = TraceCx::start_request(None, &with_parent(PARENT), "POST", "chat");
        assert_eq!(
            trace.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let headers = trace.attempt("a", "m", 1).headers();
        assert_eq!(
            headers.traceparent.as_ref().map(HeaderValue::as_bytes),
            Some(PARENT.as_bytes())
        );
        assert_eq!(
            headers.tracestate.as_ref().map(HeaderValue::as_bytes),
            Some(&b"vendor=1"[..])
        );
    }

    #[test]
    fn a_malformed_or_absent_traceparent_makes_no_trace() {
        for headers in [with_parent("00-zz-00f067aa0ba902b7-01"), HeaderMap::new()] {
            let trace = TraceCx::start_request(None, &headers, "POST", "chat");
            assert_eq!(trace.trace_id(), None);
            assert!(trace.attempt("a", "m", 1).headers().iter().next().is_none());
        }
    }
}
