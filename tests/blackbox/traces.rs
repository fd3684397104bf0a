//! Traces: spans exported over OTLP/HTTP to an in-test collector continue the caller's
//! `traceparent`, carry the GenAI attributes, one span per upstream attempt, and the backend
//! receives the same trace; a dead collector costs requests nothing.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::otlp::OtlpReceiver;
use crate::support::upstream::MockUpstream;
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PROMPT: &str = "prompt-text-never-in-spans";

async fn post_traced(base: &str, body: &serde_json::Value) -> reqwest::Response {
    http()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

#[tokio::test]
async fn spans_continue_the_callers_trace_with_a_span_per_upstream_attempt() {
    let collector = OtlpReceiver::start().await;
    let upstream = MockUpstream::stream_tokens(&["completion-text-never-in-spans"])
        .start()
        .await;
    let config = GatewayConfig::openai_pool(&[refusing_url(), upstream.base_url()])
        .favour_first_backend()
        .upstream("{retry_backoff: 1ms, first_byte_timeout: 5s, total_timeout: 30s}")
        .telemetry(&format!("{{otlp_endpoint: '{}'}}", collector.endpoint()));
    let gateway = TestGateway::start(&config).await;
    let mut body = chat_body(true);
    body["messages"][0]["content"] = PROMPT.into();
    body["max_tokens"] = 64.into();
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let answer = post_traced(&gateway.url(""), &body).await;
    assert_eq!(answer.status(), 200);
    assert!(
        answer
            .text()
            .await
            .expect("body")
            .ends_with("data: [DONE]\n\n")
    );

    // request, auth, admission, two attempts, stream
    let spans = collector.spans_of(TRACE, 6).await;
    let named = |name: &str| {
        spans
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let [request] = named("POST /v1/chat/completions")
        .try_into()
        .expect("one request span");
    assert_eq!(request.kind, 2, "the request span is a server span");
    assert_eq!(
        request.parent_span_id, CALLER_SPAN,
        "it continues the caller's span"
    );
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "test-model"),
        ("gen_ai.response.model", "test-model"),
        ("gen_ai.request.max_tokens", "64"),
        ("gen_ai.usage.input_tokens", "5"),
        ("gen_ai.usage.output_tokens", "1"),
        ("http.response.status_code", "200"),
        ("sluicegate.key_id", "full"),
        ("sluicegate.backend", "b1"),
        ("sluicegate.attempts", "2"),
    ] {
        assert_eq!(request.attr(key), Some(value), "{key} of {request:#?}");
    }
    for step in ["auth", "admission", "stream"] {
        let [span] = named(step).try_into().expect("one span per step");
        assert_eq!(span.parent_span_id, request.span_id, "{step} is a child");
    }

    let mut attempts = named("chat upstream-model");
    attempts.sort_by(|a, b| {
        a.attr("sluicegate.attempt")
            .cmp(&b.attr("sluicegate.attempt"))
    });
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for (attempt, (number, backend, outcome)) in attempts
        .iter()
        .zip([("1", "b0", "upstream_unavailable"), ("2", "b1", "answered")])
    {
        assert_eq!(attempt.kind, 3, "an attempt is a client span");
        assert_eq!(attempt.parent_span_id, request.span_id);
        assert_eq!(attempt.attr("sluicegate.attempt"), Some(number));
        assert_eq!(attempt.attr("sluicegate.backend"), Some(backend));
        assert_eq!(attempt.attr("sluicegate.outcome"), Some(outcome));
        assert_eq!(attempt.attr("gen_ai.request.model"), Some("upstream-model"));
    }

    let seen = upstream.requests();
    let traceparent = seen[0]
        .header("traceparent")
        .expect("the backend got a traceparent");
    assert_eq!(
        traceparent,
        format!("00-{TRACE}-{}-01", attempts[1].span_id),
        "the backend's parent is the attempt that reached it"
    );
    assert_eq!(seen[0].header("tracestate"), Some("vendor=opaque"));

    let everything = format!("{spans:?}");
    for secret in [PROMPT, "completion-text-never-in-spans", KEY] {
        assert!(!everything.contains(secret), "{secret} leaked into a span");
    }
}

#[tokio::test]
async fn without_tracing_the_callers_traceparent_reaches_the_backend() {
    let upstream = MockUpstream::stream(2).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let answer = post_traced(&gateway.url(""), &chat_body(true)).await;
    assert_eq!(answer.status(), 200);
    answer.text().await.expect("body");
    let seen = upstream.requests();
    assert_eq!(
        seen[0].header("traceparent"),
        Some(format!("00-{TRACE}-{CALLER_SPAN}-01").as_str())
    );
}

/// A collector that accepts connections and never answers: the worst case for an exporter.
async fn blackhole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    #[expect(clippy::disallowed_methods, reason = "held for the test's length")]
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_dead_collector_does_not_slow_requests() {
    let (endpoint, _collector) = blackhole().await;
    let config = GatewayConfig::mock(2, "0ms").telemetry(&format!(
        "{{otlp_endpoint: '{endpoint}', otlp_timeout: 10s, trace_queue_size: 8}}"
    ));
    let gateway = TestGateway::start(&config).await;
    // Each request makes at least four spans: the queue is full after the second request and
    // its one export is stuck for 10 s. A request that waited on it would take seconds.
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        let answer = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(answer.status(), 200);
        answer.text().await.expect("body");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a request took {slowest:?} with a dead collector"
    );
    let exposition = metrics_text(&gateway.url("")).await;
    assert!(
        exposition
            .lines()
            .any(|line| line
                .starts_with("sluicegate_trace_spans_dropped_total{reason=\"queue_full\"}")),
        "dropped spans are counted"
    );
}
