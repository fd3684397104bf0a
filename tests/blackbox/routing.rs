//! Backend pools: balancing, circuit breakers, retries and fallbacks before the first byte
//! (never after), upstream 429 cool-downs, and the total deadline across attempts.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

fn urls(upstreams: &[&MockUpstream]) -> Vec<String> {
    upstreams.iter().map(|u| u.base_url()).collect()
}

async fn stream_ok(gateway: &TestGateway) -> (String, String) {
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let backend = response.headers()["x-sluicegate-backend"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = response.text().await.expect("body");
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "complete stream from {backend}: {body:?}"
    );
    (backend, body)
}

#[tokio::test]
async fn two_healthy_backends_share_the_load() {
    let (a, b) = (
        MockUpstream::stream(1).keep_alive().start().await,
        MockUpstream::stream(1).keep_alive().start().await,
    );
    let gateway = TestGateway::start(&GatewayConfig::openai_pool(&urls(&[&a, &b]))).await;
    for _ in 0..200 {
        stream_ok(&gateway).await;
    }
    let (to_a, to_b) = (a.requests().len(), b.requests().len());
    assert_eq!(to_a + to_b, 200);
    assert!(
        (80..=120).contains(&to_a),
        "within 20% of an even split: {to_a} / {to_b}"
    );
}

#[tokio::test]
async fn a_slower_backend_gets_fewer_requests() {
    let slow = MockUpstream::stream(5)
        .pace(ms(40))
        .keep_alive()
        .start()
        .await;
    let fast = MockUpstream::stream(5).keep_alive().start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai_pool(&urls(&[&slow, &fast]))).await;
    let workers = (0..8).map(|_| async {
        for _ in 0..15 {
            stream_ok(&gateway).await;
        }
    });
    futures_util::future::join_all(workers).await;
    let (to_slow, to_fast) = (slow.requests().len(), fast.requests().len());
    assert!(
        to_slow * 2 < to_fast,
        "fewest in flight wins: slow {to_slow}, fast {to_fast}"
    );
}

#[tokio::test]
async fn a_failing_backend_trips_its_breaker_and_the_half_open_probe_restores_it() {
    let failing = MockUpstream::reply(Reply::Status {
        status: 500,
        body: "{}".into(),
        headers: vec![],
    })
    .start()
    .await;
    let healthy = MockUpstream::stream(2).keep_alive().start().await;
    let config = GatewayConfig::openai_pool(&urls(&[&failing, &healthy]))
        .upstream("{first_byte_timeout: 2s, idle_timeout: 2s, total_timeout: 10s, breaker: {consecutive_failures: 3, open_for: 1s}}");
    let gateway = TestGateway::start(&config).await;

    for _ in 0..40 {
        let (backend, _) = stream_ok(&gateway).await;
        assert_eq!(
            backend, "b1",
            "every request is answered by the healthy backend"
        );
    }
    // Tripped after 3 failures; after that only a probe per open period (1 s, then 2 s, ...)
    // may reach it, however slowly this machine runs the 40 requests.
    let probes = failing.requests().len() - 3;
    assert!(
        probes <= 2,
        "left alone after tripping, but for probes: {probes}"
    );

    // The backend recovers; after the open period one probe goes to it and closes the circuit.
    failing.set_reply(Reply::Stream(StreamScript {
        tokens: vec!["ok".into()],
        ..Default::default()
    }));
    tokio::time::sleep(ms(1200)).await;
    let back = within(
        Duration::from_secs(10),
        "the probe to restore the backend",
        async {
            loop {
                if stream_ok(&gateway).await.0 == "b0" {
                    return;
                }
            }
        },
    );
    back.await;
    for _ in 0..40 {
        stream_ok(&gateway).await;
    }
    assert!(
        failing.requests().len() > 10,
        "traffic returned: {}",
        failing.requests().len()
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_backend() {
    let healthy = MockUpstream::stream(3).start().await;
    let config = GatewayConfig::openai_pool(&[refusing_url(), healthy.base_url()]);
    let gateway = TestGateway::start(&config).await;
    for _ in 0..5 {
        let (backend, body) = stream_ok(&gateway).await;
        assert_eq!(backend, "b1");
        assert_eq!(content_of(&body), "tok0 tok1 tok2 ");
    }
    assert_eq!(
        healthy.requests().len(),
        5,
        "exactly one generation per request"
    );
}

#[tokio::test]
async fn a_drop_after_the_first_byte_is_never_retried() {
    let dropping = MockUpstream::stream(10).drop_after(3).start().await;
    let healthy = MockUpstream::stream(10).start().await;
    // Weight the dropping backend so the first choice is all but certain to be it.
    let config = GatewayConfig::openai_pool(&urls(&[&dropping, &healthy])).favour_first_backend();
    let gateway = TestGateway::start(&config).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.headers()["x-sluicegate-backend"], "b0");
    let body = response.text().await.expect("body");
    assert_eq!(content_of(&body), "tok0 tok1 tok2 ", "no token twice");
    assert!(!body.contains("[DONE]"));
    assert!(
        body.ends_with("\"code\":\"upstream_disconnected\"}}\n\n"),
        "{body:?}"
    );
    assert_eq!(healthy.requests().len(), 0, "no retry after the first byte");
}

#[tokio::test]
async fn the_fallback_model_answers_when_every_backend_is_down() {
    let fallback = MockUpstream::stream(2).start().await;
    let config = GatewayConfig::openai_pool(&[refusing_url(), refusing_url()])
        .fallback_to(&fallback.base_url());
    let gateway = TestGateway::start(&config).await;
    let (backend, body) = stream_ok(&gateway).await;
    assert_eq!(backend, "fallback");
    assert!(
        data_json(&body).iter().all(|c| c["model"] == "test-model"),
        "the client sees the model it asked for"
    );
}

#[tokio::test]
async fn an_upstream_429_cools_its_backend_down_for_its_retry_after() {
    let busy = MockUpstream::reply(Reply::Status {
        status: 429,
        body: r#"{"error":{"message":"slow down"}}"#.into(),
        headers: vec![("retry-after".into(), "2".into())],
    })
    .start()
    .await;
    let healthy = MockUpstream::stream(1).keep_alive().start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai_pool(&urls(&[&busy, &healthy]))).await;
    let started = Instant::now();
    while busy.requests().is_empty() {
        stream_ok(&gateway).await;
    }
    let cooled_at = Instant::now();
    while cooled_at.elapsed() < ms(1500) {
        assert_eq!(
            stream_ok(&gateway).await.0,
            "b1",
            "the busy backend is skipped while cooling"
        );
    }
    assert_eq!(busy.requests().len(), 1);
    tokio::time::sleep(ms(700)).await;
    within(
        Duration::from_secs(5),
        "the cooled-down backend to get traffic again",
        async {
            while busy.requests().len() < 2 {
                stream_ok(&gateway).await;
            }
        },
    )
    .await;
    assert!(started.elapsed() >= ms(2000));

    // With no other backend left, the client gets the 429 and a retry-after.
    let gateway = TestGateway::start(&GatewayConfig::openai_pool(&urls(&[&busy]))).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn the_total_deadline_bounds_every_attempt_together() {
    let (a, b) = (
        MockUpstream::reply(Reply::Hang).start().await,
        MockUpstream::reply(Reply::Hang).start().await,
    );
    let config = GatewayConfig::openai_pool(&urls(&[&a, &b])).upstream(
        "{first_byte_timeout: 600ms, idle_timeout: 5s, total_timeout: 1s, max_attempts: 3}",
    );
    let gateway = TestGateway::start(&config).await;
    let started = Instant::now();
    let (status, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "upstream_total_timeout");
    assert!(
        took >= ms(900) && took < ms(2000),
        "ended at the 1 s deadline: {took:?}"
    );
    assert_eq!(
        a.requests().len() + b.requests().len(),
        2,
        "the second attempt went to the other backend"
    );
}

#[tokio::test]
async fn a_stalled_backend_loses_to_the_hedge_and_its_connection_is_closed() {
    let stalled = MockUpstream::reply(Reply::Hang).start().await;
    let healthy = MockUpstream::stream(2).start().await;
    // The stalled backend is the near-certain first choice.
    let config = GatewayConfig::openai_pool(&urls(&[&stalled, &healthy]))
        .hedge_after("200ms")
        .upstream("{first_byte_timeout: 1s, idle_timeout: 5s, total_timeout: 10s}")
        .favour_first_backend();
    let gateway = TestGateway::start(&config).await;

    let started = Instant::now();
    let (backend, body) = stream_ok(&gateway).await;
    let took = started.elapsed();
    assert_eq!(backend, "b1", "the hedge answered");
    assert_eq!(content_of(&body), "tok0 tok1 ");
    assert!(
        took >= ms(200) && took < ms(1500),
        "answered soon after the hedge: {took:?}"
    );
    within(
        ms(1000),
        "the losing call's connection to close",
        stalled.closed(0),
    )
    .await;
    assert_eq!(healthy.requests().len(), 1);
}

#[tokio::test]
async fn with_every_circuit_open_requests_get_503_and_readiness_fails_when_no_model_is_left() {
    let failing = MockUpstream::reply(Reply::Status {
        status: 500,
        body: "{}".into(),
        headers: vec![],
    })
    .start()
    .await;
    let config = GatewayConfig::openai_pool(&urls(&[&failing]))
        .upstream("{first_byte_timeout: 2s, idle_timeout: 2s, total_timeout: 10s, breaker: {consecutive_failures: 3, open_for: 5s}}");
    let gateway = TestGateway::start(&config).await;
    for _ in 0..3 {
        let (status, _) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
        assert_eq!(status, 502, "the backend's own failure");
    }
    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_usable_backend"))
    );
    assert_eq!(failing.requests().len(), 3, "an open circuit is not called");
    let ready = http()
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "other-model still has a usable backend"
    );

    let mut other = chat_body(false);
    other["model"] = "other-model".into();
    for _ in 0..3 {
        post_chat(&gateway.url(""), KEY, &other).await;
    }
    let ready = http()
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "no model has a usable backend");
    assert_eq!(
        ready.text().await.expect("body"),
        r#"{"status":"no_usable_backend"}"#
    );
}

#[tokio::test]
async fn a_backend_that_fails_after_its_head_but_before_any_byte_is_retried() {
    let empty = MockUpstream::stream(5).drop_after(0).start().await;
    let healthy = MockUpstream::stream(3).start().await;
    let config = GatewayConfig::openai_pool(&urls(&[&empty, &healthy])).favour_first_backend();
    let gateway = TestGateway::start(&config).await;
    let (backend, body) = stream_ok(&gateway).await;
    assert_eq!(backend, "b1");
    assert_eq!(content_of(&body), "tok0 tok1 tok2 ");
    assert_eq!(
        empty.requests().len(),
        1,
        "the empty answer was tried first"
    );
}
