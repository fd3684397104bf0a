//! Per-key limits: requests/min exactly, tokens/min with reservations refunded on settlement,
//! concurrent streams as leases, OpenAI's headers. Each scenario runs in-process here and
//! shared through a real Redis in `shared_limits`.

use futures_util::StreamExt;
use serde_json::json;

use crate::support::*;

/// The limiter under test: in-process, or shared through `redis`.
pub fn limited(config: GatewayConfig, redis: Option<&RedisServer>) -> GatewayConfig {
    match redis {
        Some(redis) => config.redis(&redis.url()),
        None => config,
    }
}

async fn fire_parallel(gateway: &TestGateway, n: usize) -> Vec<reqwest::Response> {
    let (base, body) = (gateway.url(""), chat_body(false));
    let requests = (0..n).map(|_| post_chat(&base, KEY, &body));
    futures_util::future::join_all(requests).await
}

pub async fn exactly_the_requests_per_minute_pass_under_a_parallel_burst(
    redis: Option<&RedisServer>,
) {
    let gateway = TestGateway::start(&limited(
        GatewayConfig::mock(1, "1ms").tier("{requests_per_minute: 10}"),
        redis,
    ))
    .await;
    let responses = fire_parallel(&gateway, 50).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        ok, 10,
        "a 10/min key admits exactly 10 of 50 parallel requests"
    );
    let refused = responses
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("a refusal");
    let headers = refused.headers().clone();
    assert_eq!(headers["x-ratelimit-limit-requests"], "10");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let retry_ms: u64 = headers["retry-after-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!(
        (5_000..=6_000).contains(&retry_ms),
        "one request refills in 6 s: {retry_ms}"
    );
    assert_eq!(headers["retry-after"], "6");
    let (_, body) = error_of(refused).await;
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("requests per minute")
    );
}

pub async fn successful_responses_carry_consistent_rate_limit_headers(redis: Option<&RedisServer>) {
    let config =
        GatewayConfig::mock(1, "1ms").tier("{requests_per_minute: 100, tokens_per_minute: 100000}");
    let gateway = TestGateway::start(&limited(config, redis)).await;
    let mut remaining = Vec::new();
    for stream in [false, true, false] {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(stream)).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "100");
        assert_eq!(headers["x-ratelimit-limit-tokens"], "100000");
        for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
            let reset = headers[name].to_str().expect("ascii");
            assert!(
                reset.ends_with('s'),
                "{name} is formatted like 1s or 20ms: {reset}"
            );
        }
        remaining.push(
            headers["x-ratelimit-remaining-requests"]
                .to_str()
                .expect("ascii")
                .parse::<u64>()
                .expect("number"),
        );
        response.bytes().await.expect("body");
    }
    assert_eq!(remaining, [99, 98, 97], "each request takes one");
}

pub async fn tokens_are_reserved_then_refunded_when_the_answer_was_short(
    redis: Option<&RedisServer>,
) {
    // Each request reserves its prompt estimate plus max_tokens 300; the answer uses 8 tokens.
    let upstream = MockUpstream::stream(3).pace(ms(300)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).tier("{tokens_per_minute: 1000}");
    let gateway = TestGateway::start(&limited(config, redis)).await;
    let mut body = chat_body(true);
    body["max_tokens"] = json!(300);

    let mut open = Vec::new();
    for _ in 0..3 {
        let response = post_chat(&gateway.url(""), KEY, &body).await;
        assert_eq!(
            response.status(),
            200,
            "three reservations of ~310 fit in 1000"
        );
        open.push(response);
    }
    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &body).await).await;
    assert_eq!(
        (status, error["error"]["type"].as_str()),
        (429, Some("tokens")),
        "a fourth does not"
    );

    for response in open {
        assert!(
            response
                .text()
                .await
                .expect("stream")
                .ends_with("[DONE]\n\n")
        );
    }
    // Refilling 310 tokens at 1000/min would take about 19 s; the refunds make room at once.
    let response = until_admitted(
        &gateway.url(""),
        KEY,
        &body,
        ms(3000),
        "a refunded reservation",
    )
    .await;
    assert!(
        response.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .expect("ascii")
            .parse::<u64>()
            .expect("n")
            > 300
    );
}

pub async fn a_request_that_can_never_fit_says_not_to_retry(redis: Option<&RedisServer>) {
    let gateway = TestGateway::start(&limited(
        GatewayConfig::mock(1, "1ms").tier("{tokens_per_minute: 5000}"),
        redis,
    ))
    .await;
    let mut body = chat_body(false);
    body["max_tokens"] = json!(1);
    body["max_completion_tokens"] = json!(10_000);
    let response = post_chat(&gateway.url(""), KEY, &body).await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    assert!(response.headers().get("retry-after").is_none());
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["error"]["type"].as_str()),
        (429, Some("tokens"))
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("whole limit"),
        "{error}"
    );
}

pub async fn a_refused_request_takes_nothing_from_any_limit(redis: Option<&RedisServer>) {
    let config = GatewayConfig::mock(50, "100ms")
        .tier("{requests_per_minute: 100, tokens_per_minute: 10000}");
    let gateway = TestGateway::start(&limited(config, redis)).await;
    let mut too_big = chat_body(true);
    too_big["max_tokens"] = json!(9000);
    // The first holds its 9000-token reservation while it streams.
    let first = post_chat(&gateway.url(""), KEY, &too_big).await;
    assert_eq!(first.status(), 200);
    let refused = post_chat(&gateway.url(""), KEY, &too_big).await;
    assert_eq!(refused.status(), 429, "the tokens limit refuses the second");
    let mut small = chat_body(false);
    small["max_tokens"] = json!(100);
    let next = post_chat(&gateway.url(""), KEY, &small).await;
    assert_eq!(next.status(), 200);
    assert_eq!(
        next.headers()["x-ratelimit-remaining-requests"],
        "98",
        "the refusal took no request"
    );
    drop(first);
}

pub async fn the_output_cap_is_written_upstream_and_bounded_by_the_tier(
    redis: Option<&RedisServer>,
) {
    let upstream = MockUpstream::stream(1).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .tier("{default_max_tokens: 64, max_tokens: 100}");
    let gateway = TestGateway::start(&limited(config, redis)).await;
    let mut asks_too_much = chat_body(true);
    asks_too_much["max_completion_tokens"] = json!(500);
    for body in [chat_body(true), asks_too_much] {
        chat_text(&gateway.url(""), KEY, &body).await;
    }
    let seen = upstream.requests();
    assert_eq!(
        seen[0].body["max_tokens"], 64,
        "the tier default when the client set none"
    );
    assert_eq!(
        seen[1].body["max_completion_tokens"], 100,
        "lowered to the tier maximum"
    );
    assert!(
        seen[1].body.get("max_tokens").is_none(),
        "the client's field is the one written"
    );
}

pub async fn concurrent_streams_are_leases_released_when_a_stream_ends_or_is_abandoned(
    redis: Option<&RedisServer>,
) {
    let upstream = MockUpstream::stream(10).pace(ms(100)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).tier("{concurrent_streams: 2}");
    let gateway = TestGateway::start(&limited(config, redis)).await;

    let first = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    let second = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(true)).await).await;
    assert_eq!(status, 429, "the third simultaneous stream is refused");
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("concurrent")
    );

    // Abandoning a stream mid-way releases its lease.
    let mut abandoned = first.bytes_stream();
    abandoned.next().await;
    drop(abandoned);
    let third = until_admitted(
        &gateway.url(""),
        KEY,
        &chat_body(true),
        ms(2000),
        "the abandoned stream's lease",
    )
    .await;
    // Finishing one releases it too.
    assert!(second.text().await.expect("stream").ends_with("[DONE]\n\n"));
    drop(third);
}

#[tokio::test]
async fn in_process_exactly_the_requests_per_minute_pass_under_a_parallel_burst() {
    exactly_the_requests_per_minute_pass_under_a_parallel_burst(None).await;
}

#[tokio::test]
async fn in_process_successful_responses_carry_consistent_rate_limit_headers() {
    successful_responses_carry_consistent_rate_limit_headers(None).await;
}

#[tokio::test]
async fn in_process_tokens_are_reserved_then_refunded_when_the_answer_was_short() {
    tokens_are_reserved_then_refunded_when_the_answer_was_short(None).await;
}

#[tokio::test]
async fn in_process_a_request_that_can_never_fit_says_not_to_retry() {
    a_request_that_can_never_fit_says_not_to_retry(None).await;
}

#[tokio::test]
async fn in_process_a_refused_request_takes_nothing_from_any_limit() {
    a_refused_request_takes_nothing_from_any_limit(None).await;
}

#[tokio::test]
async fn in_process_the_output_cap_is_written_upstream_and_bounded_by_the_tier() {
    the_output_cap_is_written_upstream_and_bounded_by_the_tier(None).await;
}

#[tokio::test]
async fn in_process_concurrent_streams_are_leases_released_when_a_stream_ends_or_is_abandoned() {
    concurrent_streams_are_leases_released_when_a_stream_ends_or_is_abandoned(None).await;
}
