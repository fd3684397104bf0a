//! What each way an attempt ends tells its backend's circuit breaker: abandoned attempts,
//! probes decided at their first byte, failures only the relay sees, bounded `retry-after`
//! cool-downs, and an in-flight cap that holds under concurrency.

use std::time::Duration;

use crate::support::*;

fn urls(upstreams: &[&MockUpstream]) -> Vec<String> {
    upstreams.iter().map(|u| u.base_url()).collect()
}

fn status(code: u16, headers: &[(&str, &str)]) -> Reply {
    Reply::Status {
        status: code,
        body: r#"{"error":{"message":"busy"}}"#.into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

async fn backend_of(gateway: &TestGateway) -> String {
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let backend = response.headers()["x-sluicegate-backend"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let _ = response.text().await;
    backend
}

/// Sends a request and gives up on it after `patience`, as an impatient client does.
async fn give_up_after(gateway: &TestGateway, patience: Duration) {
    let (base, body) = (gateway.url(""), chat_body(true));
    let sent = post_chat(&base, KEY, &body);
    assert!(
        tokio::time::timeout(patience, sent).await.is_err(),
        "the request was still waiting when its client left"
    );
}

const BREAKER: &str = "breaker: {consecutive_failures: 3, open_for: 1s}";

#[tokio::test]
async fn a_blackholed_backend_trips_even_when_every_client_gives_up_first() {
    let (hole, healthy) = (
        MockUpstream::reply(Reply::Hang).start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&hole, &healthy]))
        .favour_first_backend()
        .upstream(&format!(
            "{{first_byte_timeout: 10s, total_timeout: 30s, {BREAKER}}}"
        ));
    let gateway = TestGateway::start(&config).await;
    // With no first byte ever seen from it, waiting half the first-byte timeout is too long.
    for _ in 0..3 {
        give_up_after(&gateway, ms(5_300)).await;
    }
    assert_eq!(
        backend_of(&gateway).await,
        "b1",
        "three abandoned waits of 5.3 s opened b0's circuit"
    );
    assert_eq!(hole.requests().len(), 3, "b0 is left alone now");
}

#[tokio::test]
async fn a_client_leaving_early_neither_closes_nor_trips_a_circuit() {
    let (flaky, healthy) = (
        MockUpstream::reply(status(500, &[])).start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&flaky, &healthy]))
        .favour_first_backend()
        .upstream(&format!(
            "{{first_byte_timeout: 10s, total_timeout: 30s, {BREAKER}}}"
        ));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..3 {
        assert_eq!(backend_of(&gateway).await, "b1", "retried past the 500");
    }
    assert_eq!(flaky.requests().len(), 3, "b0's circuit opened");

    // The open period passes; the probe meets a slow b0 and its client leaves within 200 ms.
    tokio::time::sleep(ms(1_100)).await;
    flaky.set_reply(Reply::Hang);
    give_up_after(&gateway, ms(200)).await;
    assert_eq!(
        flaky.requests().len(),
        4,
        "the abandoned request was the probe"
    );

    // The abandoned probe proved nothing: the next request probes again, fails, and the circuit
    // reopens at once. Had the abandoned probe counted as a success, the circuit would be closed
    // and three more failures would reach b0.
    flaky.set_reply(status(500, &[]));
    for _ in 0..3 {
        assert_eq!(backend_of(&gateway).await, "b1");
    }
    assert_eq!(flaky.requests().len(), 5, "one more probe, then left alone");
}

#[tokio::test]
async fn a_probe_is_decided_at_its_first_byte_not_when_its_stream_ends() {
    let upstream = MockUpstream::reply(status(500, &[])).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).upstream(&format!(
        "{{first_byte_timeout: 5s, total_timeout: 30s, max_attempts: 1, {BREAKER}}}"
    ));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..3 {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(response.status(), 502);
    }
    let refused = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(refused.status(), 503, "the only backend's circuit is open");

    // Recovered, but its answers are long: 40 tokens over 4 s.
    upstream.set_reply(Reply::Stream(StreamScript {
        tokens: (0..40).map(|i| format!("t{i} ")).collect(),
        pace: ms(100),
        ..Default::default()
    }));
    tokio::time::sleep(ms(1_100)).await;
    let mut probe = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(probe.status(), 200);
    let _first = probe.chunk().await.expect("the probe's first chunk");

    let ready = http()
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "usable again while the probe still streams"
    );
    let second = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(
        second.status(),
        200,
        "a second request is served while the probe still streams"
    );
}

#[tokio::test]
async fn a_call_admitted_before_the_circuit_opened_cannot_close_it() {
    let (flaky, healthy) = (
        MockUpstream::stream(20).pace(ms(100)).start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&flaky, &healthy]))
        .favour_first_backend()
        .upstream(&format!(
            "{{first_byte_timeout: 3s, total_timeout: 30s, max_attempts: 2, {BREAKER}}}"
        ));
    let gateway = TestGateway::start(&config).await;
    // A long stream from b0 starts while its circuit is closed; it ends about 2 s from now.
    let old = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(old.headers()["x-sluicegate-backend"], "b0");
    // Meanwhile b0 fails three times and its circuit opens.
    flaky.set_reply(status(500, &[]));
    for _ in 0..3 {
        assert_eq!(backend_of(&gateway).await, "b1");
    }
    // After the open period the probe meets a hanging b0: the circuit is half-open while the
    // old stream ends successfully, and that success must not close it.
    tokio::time::sleep(ms(1_100)).await;
    flaky.set_reply(Reply::Hang);
    let probe = {
        let base = gateway.url("");
        #[expect(
            clippy::disallowed_methods,
            reason = "the probe runs beside the old stream"
        )]
        tokio::spawn(async move { post_chat(&base, KEY, &chat_body(true)).await.status() })
    };
    let body = old.text().await.expect("the old stream");
    assert!(body.ends_with("[DONE]\n\n"), "the old stream ended well");
    assert_eq!(
        probe.await.expect("probe task"),
        200,
        "the probe fell back to b1"
    );
    // The probe failed, so the circuit is open again: b0 is not tried.
    flaky.set_reply(status(500, &[]));
    let before = flaky.requests().len();
    assert_eq!(backend_of(&gateway).await, "b1");
    assert_eq!(
        flaky.requests().len(),
        before,
        "b0's circuit stayed open; the old call's success did not close it"
    );
}

#[tokio::test]
async fn failures_only_the_relay_sees_reach_the_breaker() {
    // b0 answers 200 and then reports an in-band error after one chunk, every time.
    let (broken, healthy) = (
        MockUpstream::stream(5).error_after(1).start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&broken, &healthy]))
        .favour_first_backend()
        .upstream(&format!("{{total_timeout: 30s, {BREAKER}}}"));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..3 {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(response.headers()["x-sluicegate-backend"], "b0");
        let body = response.text().await.expect("body");
        assert!(body.contains("upstream_error") && !body.contains("[DONE]"));
    }
    assert_eq!(
        backend_of(&gateway).await,
        "b1",
        "three in-band failures opened b0's circuit"
    );
}

#[tokio::test]
async fn an_in_band_error_that_blames_the_request_does_not_count_against_the_backend() {
    // vLLM reports a bad request found mid-generation in-band, with code 400.
    let picky = RawUpstream::start(|mut conn| async move {
        let first = r#"data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"so"}}]}"#;
        let event = r#"data: {"error":{"object":"error","message":"bad grammar","type":"BadRequestError","code":400}}"#;
        let body = format!("{first}\n\n{event}\n\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        while conn.read_request().await
            && conn.write(head.as_bytes()).await
            && conn.write(body.as_bytes()).await
        {}
    })
    .await;
    let healthy = MockUpstream::stream(1).keep_alive().start().await;
    let config = GatewayConfig::openai_pool(&[picky.base_url(), healthy.base_url()])
        .favour_first_backend()
        .upstream(&format!("{{total_timeout: 30s, {BREAKER}}}"));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..5 {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(
            response.headers()["x-sluicegate-backend"],
            "b0",
            "b0 keeps its traffic"
        );
        let body = response.text().await.expect("body");
        assert!(body.contains("bad grammar"), "{body}");
    }
}

#[tokio::test]
async fn the_total_deadline_ending_a_long_answer_does_not_count_against_the_backend() {
    let (slow, healthy) = (
        MockUpstream::stream(50)
            .pace(ms(100))
            .keep_alive()
            .start()
            .await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&slow, &healthy]))
        .favour_first_backend()
        .upstream(&format!("{{total_timeout: 500ms, {BREAKER}}}"));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..4 {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(response.headers()["x-sluicegate-backend"], "b0");
        let body = response.text().await.expect("body");
        assert!(body.contains("upstream_total_timeout"), "{body}");
    }
}

#[tokio::test]
async fn an_idle_timeout_mid_stream_reaches_the_breaker() {
    let (stalling, healthy) = (
        MockUpstream::stream(3).pace(ms(3_000)).start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&stalling, &healthy]))
        .favour_first_backend()
        .upstream(&format!(
            "{{idle_timeout: 300ms, total_timeout: 30s, {BREAKER}}}"
        ));
    let gateway = TestGateway::start(&config).await;
    for _ in 0..3 {
        let body = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
        assert!(body.contains("upstream_idle_timeout"), "{body}");
    }
    assert_eq!(backend_of(&gateway).await, "b1");
}

#[tokio::test]
async fn a_retry_after_is_clamped_and_may_be_a_date() {
    let (busy, healthy) = (
        MockUpstream::reply(status(429, &[("retry-after", "18446744073709551615")]))
            .start()
            .await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&busy, &healthy]))
        .favour_first_backend()
        .upstream("{max_retry_after: 1s, total_timeout: 30s}");
    let gateway = TestGateway::start(&config).await;
    assert_eq!(backend_of(&gateway).await, "b1", "b0 answered 429");
    assert_eq!(backend_of(&gateway).await, "b1", "b0 cools down");

    // The cool-down is at most 1 s, however long the upstream asked for.
    busy.set_reply(Reply::Stream(StreamScript {
        tokens: vec!["ok".into()],
        ..Default::default()
    }));
    tokio::time::sleep(ms(1_100)).await;
    assert_eq!(
        backend_of(&gateway).await,
        "b0",
        "back after max_retry_after"
    );

    // An HTTP date 2 s ahead cools it down for about that long (then clamped to 1 s).
    let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    busy.set_reply(status(429, &[("retry-after", &soon)]));
    assert_eq!(backend_of(&gateway).await, "b1");
    busy.set_reply(Reply::Stream(StreamScript {
        tokens: vec!["ok".into()],
        ..Default::default()
    }));
    assert_eq!(
        backend_of(&gateway).await,
        "b1",
        "cooling down for the date"
    );
    tokio::time::sleep(ms(1_100)).await;
    assert_eq!(backend_of(&gateway).await, "b0");
}

#[tokio::test]
async fn max_inflight_holds_under_a_concurrent_burst() {
    let upstream = MockUpstream::stream(3).pace(ms(100)).start().await;
    let config = GatewayConfig::with_backend(format!(
        "{{name: only, kind: openai, base_url: '{}', upstream_model: m, max_inflight: 2}}",
        upstream.base_url()
    ))
    .upstream("{max_attempts: 1, total_timeout: 30s}");
    let gateway = TestGateway::start(&config).await;
    let requests = (0..40).map(|_| async {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        let code = response.status().as_u16();
        let _ = response.text().await;
        code
    });
    let codes = futures_util::future::join_all(requests).await;
    assert!(codes.iter().all(|c| matches!(c, 200 | 503)), "{codes:?}");
    assert!(codes.contains(&503), "the burst exceeded the cap");
    assert!(
        upstream.max_concurrent_connections() <= 2,
        "never more than 2 in flight: {}",
        upstream.max_concurrent_connections()
    );
}
