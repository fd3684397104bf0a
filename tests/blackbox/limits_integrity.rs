//! Limits hold against what the outside does: hostile token counts from clients, lying usage
//! reports from upstreams, Redis replies that never came or came back as errors, clients that
//! leave before their answer, and a shutdown while settlements are still on their way.

use serde_json::{Value, json};

use crate::support::*;

fn remaining_tokens(response: &reqwest::Response) -> u64 {
    response.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

/// A 200 `chat.completion` reporting `usage` (raw JSON).
fn completion(usage: &str) -> Reply {
    Reply::Status {
        status: 200,
        body: format!(
            r#"{{"id":"c","object":"chat.completion","created":1,"model":"upstream-model","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
        ),
        headers: vec![],
    }
}

#[tokio::test]
async fn a_u64_max_output_cap_is_refused_and_the_shared_budget_survives() {
    let redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(1, "1ms")
        .tier("{tokens_per_minute: 20000}")
        .redis(&redis.url());
    let gateway = TestGateway::start(&config).await;
    let base = gateway.url("");
    let mut body = chat_body(false);

    let ok = post_chat(&base, KEY, &body).await;
    assert_eq!(ok.status(), 200, "an ordinary request creates the bucket");
    let ttl_before = integer(redis.command(&["PTTL", "sluicegate:{full}:tpm"]).await);
    assert!(
        ttl_before > 0,
        "the bucket expires on its own: {ttl_before}"
    );

    body["max_tokens"] = json!(u64::MAX);
    let (status, error) = error_of(post_chat(&base, KEY, &body).await).await;
    assert_eq!(
        (
            status,
            error["error"]["param"].as_str(),
            error["error"]["code"].as_str()
        ),
        (400, Some("max_tokens"), Some("integer_above_max_value")),
        "refused at parse time: {error}"
    );

    // The largest accepted cap can never fit 20,000 tokens a minute: refused without asking
    // Redis, and without touching the bucket.
    let calls = redis.evalsha_calls().await;
    body["max_tokens"] = json!((1u64 << 31) - 1);
    let refused = post_chat(&base, KEY, &body).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-should-retry"], "false");
    assert_eq!(
        redis.evalsha_calls().await,
        calls,
        "a cost above the limit never reaches Redis"
    );
    let ttl_after = integer(redis.command(&["PTTL", "sluicegate:{full}:tpm"]).await);
    assert!(ttl_after > 0, "the tokens bucket still exists: {ttl_after}");

    let next = post_chat(&base, KEY, &chat_body(false)).await;
    assert_eq!(next.status(), 200);
    assert!(
        remaining_tokens(&next) < 20_000 - 4_000,
        "the next request is still charged its reservation"
    );
}

#[tokio::test]
async fn a_tier_without_an_output_cap_still_bounds_what_a_request_reserves() {
    let upstream = MockUpstream::stream(1).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).tier("{tokens_per_minute: 10000000}");
    let gateway = TestGateway::start(&config).await;
    let mut body = chat_body(true);
    body["max_tokens"] = json!((1u64 << 31) - 1);
    let response = post_chat(&gateway.url(""), KEY, &body).await;
    assert_eq!(response.status(), 200);
    let reserved = 10_000_000 - remaining_tokens(&response);
    assert!(
        reserved <= 131_072 + 100,
        "the output reserved is the default ceiling, not 2^31: {reserved}"
    );
    let _ = response.text().await;
    assert_eq!(
        upstream.requests()[0].body["max_tokens"],
        131_072,
        "and that ceiling is what the backend is told"
    );
}

#[tokio::test]
async fn the_scripts_refuse_negative_and_fractional_numbers_without_changing_anything() {
    let redis = RedisServer::spawn().await;
    let admit = include_str!("../../src/limits/redis/admit.lua");
    let settle = include_str!("../../src/limits/redis/settle.lua");
    let keys = ["t:{k}:rpm", "t:{k}:tpm", "t:{k}:inflight"];
    for args in [
        ["10", "1000", "-5", "0", "1", "60000"],
        ["10", "1000", "2.5", "0", "1", "60000"],
        ["10", "1000", "18446744073709551615", "0", "1", "60000"],
        ["10", "1000", "nan", "0", "1", "60000"],
        ["10", "-1000", "5", "0", "1", "60000"],
    ] {
        let mut command = vec!["EVAL", admit, "3"];
        command.extend(keys);
        command.extend(args);
        let reply = redis.command(&command).await;
        let text = reply.as_string().unwrap_or_default();
        assert!(
            text.contains("must be a non-negative integer"),
            "{args:?} gave {reply:?}"
        );
    }
    for (cap, adjustment) in [("1000", "1.5"), ("-1", "5"), ("1000", "9007199254740993")] {
        let command = ["EVAL", settle, "2", keys[1], keys[2], cap, adjustment, "1"];
        let text = redis
            .command(&command)
            .await
            .as_string()
            .unwrap_or_default();
        assert!(
            text.contains("sluicegate settle: "),
            "{cap} {adjustment}: {text}"
        );
    }
    let exists = integer(redis.command(&["EXISTS", keys[0], keys[1], keys[2]]).await);
    assert_eq!(exists, 0, "no refused call wrote anything");
}

/// The batched settlement script: entries of several keys apply in order, each exactly once
/// (a repeated id and an id never admitted change nothing), and one bad entry stops the whole
/// call before anything is written.
#[tokio::test]
async fn a_settlement_batch_applies_each_admission_once_in_order() {
    let redis = RedisServer::spawn().await;
    let settle = include_str!("../../src/limits/redis/settle.lua");
    let (a_tpm, a_inflight, b_tpm, b_inflight) =
        ("t:{a}:tpm", "t:{a}:inflight", "t:{b}:tpm", "t:{b}:inflight");
    for (zset, id) in [(a_inflight, "1"), (a_inflight, "2"), (b_inflight, "3")] {
        redis.command(&["ZADD", zset, "99999999999999", id]).await;
    }
    let bad = [
        "EVAL", settle, "4", a_tpm, a_inflight, b_tpm, b_inflight, "1000", "-100", "1", "1000",
        "x", "3",
    ];
    let text = redis.command(&bad).await.as_string().unwrap_or_default();
    assert!(text.contains("sluicegate settle: "), "{text}");
    assert_eq!(
        integer(redis.command(&["ZCARD", a_inflight]).await),
        2,
        "the bad call applied nothing"
    );

    // A full bucket of 1000 charged 100 then 250 for key a (one script, one instant: no
    // refill between them), 40 for key b; the repeat of id 1 and the unknown id 9 do nothing.
    let batch = [
        "EVAL", settle, "10", a_tpm, a_inflight, a_tpm, a_inflight, b_tpm, b_inflight, a_tpm,
        a_inflight, a_tpm, a_inflight, "1000", "-100", "1", "1000", "-250", "2", "1000", "-40",
        "3", "1000", "-500", "1", "1000", "-500", "9",
    ];
    assert_eq!(
        integer(redis.command(&batch).await),
        3,
        "three admissions settled"
    );
    let level = |key: &'static str| {
        let redis = &redis;
        async move {
            redis
                .command(&["HGET", key, "l"])
                .await
                .as_string()
                .unwrap_or_default()
        }
    };
    assert_eq!(level(a_tpm).await, "650");
    assert_eq!(level(b_tpm).await, "960");
    let left = integer(redis.command(&["EXISTS", a_inflight, b_inflight]).await);
    assert_eq!(left, 0, "every lease released (the emptied sets are gone)");
}

#[tokio::test]
async fn an_error_reply_from_redis_does_not_switch_the_gateway_to_on_error() {
    let redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(1, "1ms")
        .tier("{requests_per_minute: 3}")
        .redis(&redis.url());
    let (a, b) = (
        TestGateway::start(&config).await,
        TestGateway::start(&config).await,
    );
    // A key of the wrong type makes the admission script fail with an error reply every time.
    redis
        .command(&["SET", "sluicegate:{full}:rpm", "not a hash"])
        .await;
    for _ in 0..6 {
        let response = post_chat(&a.url(""), KEY, &chat_body(false)).await;
        assert!(
            matches!(response.status().as_u16(), 200 | 429),
            "the poisoned key falls back, never a 5xx: {}",
            response.status()
        );
    }
    let ready: Value = http()
        .get(a.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ready["redis"], "up",
        "error replies are not an outage: {ready}"
    );
    // Every other key is still limited through Redis: exactly 3 of 10 across two replicas.
    let mut admitted = 0;
    for i in 0..10 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let response = post_chat(&gateway.url(""), OTHER_KEY, &other_model(false)).await;
        admitted += usize::from(response.status() == 200);
    }
    assert_eq!(admitted, 3, "shared limits still hold for every other key");
}

#[tokio::test]
async fn an_admission_whose_reply_timed_out_is_undone() {
    let redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(1, "1ms")
        .tier("{concurrent_streams: 1, tokens_per_minute: 100000}")
        .redis(&redis.url());
    let gateway = TestGateway::start(&config).await;
    let base = gateway.url("");
    assert_eq!(post_chat(&base, KEY, &chat_body(false)).await.status(), 200);

    // Redis holds every command for 400 ms: the admission's 50 ms timeout passes, the request
    // falls back to the in-process limiter, and the admission runs when the pause ends.
    redis.command(&["CLIENT", "PAUSE", "400", "ALL"]).await;
    let response = post_chat(&base, KEY, &chat_body(false)).await;
    assert_eq!(response.status(), 200, "served on the fallback");

    // The undo follows the admission on the same connection, so nothing stays in flight.
    within(ms(3000), "the late admission to be undone", async {
        loop {
            let inflight = redis
                .command(&["ZCARD", "sluicegate:{full}:inflight"])
                .await;
            if integer(inflight) == 0 {
                break;
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let next = post_chat(&base, KEY, &chat_body(false)).await;
    assert_eq!(
        next.status(),
        200,
        "a one-stream key is not blocked by a lease nobody holds"
    );
}

#[tokio::test]
async fn a_usage_report_cannot_turn_a_charge_into_a_refund() {
    // The upstream claims u64::MAX tokens in total: read as a number that wraps, that used to
    // refund the reservation and more.
    let upstream = MockUpstream::reply(completion(
        r#"{"prompt_tokens":5,"completion_tokens":10,"total_tokens":18446744073709551615}"#,
    ))
    .start()
    .await;
    let config = GatewayConfig::openai(&upstream.base_url()).tier("{tokens_per_minute: 100000}");
    let gateway = TestGateway::start(&config).await;
    let first = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    assert_eq!(first.status(), 200);
    let reserved = 100_000 - remaining_tokens(&first) as i64;
    let second = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    assert_eq!(second.status(), 200);
    // What the first request was charged, less what refilled between the two (under a second
    // at 100,000 a minute); the clamp allows at most 3x the prompt estimate plus the output cap.
    let charged = 100_000 - remaining_tokens(&second) as i64 - reserved;
    assert!(
        (reserved - 1_500..=reserved + 100).contains(&charged),
        "the first request was charged about its reservation (clamped), not refunded: {charged} \
         charged, {reserved} reserved"
    );
}

#[tokio::test]
async fn a_prompt_carried_in_tool_definitions_is_charged_as_reported() {
    // Two words of content, 120 KB of tool descriptions: the backend truthfully reports 40,000
    // prompt tokens, and that is what the key is charged, not a ceiling built from the content.
    let upstream = MockUpstream::reply(completion(
        r#"{"prompt_tokens":40000,"completion_tokens":1,"total_tokens":40001}"#,
    ))
    .start()
    .await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .server("{max_body_bytes: 1048576}")
        .tier("{tokens_per_minute: 1000000}");
    let gateway = TestGateway::start(&config).await;
    let mut body = chat_body(false);
    body["max_tokens"] = json!(10);
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "description": "d ".repeat(60_000)}}]);
    let first = post_chat(&gateway.url(""), KEY, &body).await;
    assert_eq!(first.status(), 200);
    let reserved = 1_000_000 - remaining_tokens(&first) as i64;
    assert!(reserved > 30_000, "the tools are reserved for: {reserved}");
    let second = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    let charged = 1_000_000 - remaining_tokens(&second) as i64 - 4_105;
    assert!(
        (40_001 - 5_000..=40_001).contains(&charged),
        "charged what the backend reported: {charged}"
    );
}

#[tokio::test]
async fn a_client_that_leaves_a_non_streamed_request_is_charged_its_prompt() {
    let upstream = MockUpstream::reply(Reply::Hang).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).tier("{tokens_per_minute: 6000}");
    let gateway = TestGateway::start(&config).await;
    let base = gateway.url("");
    // 600 tokens of prompt (estimated at 1,007 before the answer) and an output cap of 10.
    let mut body = chat_body(false);
    body["messages"][0]["content"] = json!(" word".repeat(600));
    body["max_tokens"] = json!(10);

    let abandoned = {
        let (base, body) = (base.clone(), body.clone());
        #[expect(
            clippy::disallowed_methods,
            reason = "the client is aborted mid-request"
        )]
        tokio::spawn(async move { post_chat(&base, KEY, &body).await })
    };
    within(ms(3000), "the upstream to receive the request", async {
        while upstream.requests().is_empty() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    abandoned.abort();
    within(
        ms(3000),
        "the gateway to close the upstream call",
        upstream.closed(0),
    )
    .await;

    upstream.set_reply(completion(
        r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#,
    ));
    let next = post_chat(&base, KEY, &chat_body(false)).await;
    assert_eq!(next.status(), 200);
    // 6,000 less this request's reservation (4,105) leaves 1,895 when the abandoned one was
    // refunded; 607 less (its prompt counted with the tokenizer) when it stayed charged, plus
    // a little refill.
    let remaining = remaining_tokens(&next);
    assert!(
        remaining < 1_500,
        "the abandoned request kept its prompt charged: {remaining} left"
    );
}

#[tokio::test]
async fn shutdown_waits_for_settlements_still_on_their_way() {
    let redis = RedisServer::spawn().await;
    let upstream = MockUpstream::stream(3).pace(ms(100)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .tier("{concurrent_streams: 5}")
        .redis(&redis.url());
    let mut gateway = TestGateway::start(&config).await;
    let mut response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    let _first = response.chunk().await.expect("first chunk");
    // Writes (the settlement script among them) wait 1.5 s; reads such as ZCARD do not.
    redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let body = response.text().await.expect("the rest of the stream");
    assert!(body.ends_with("[DONE]\n\n"));
    let inflight = || redis.command(&["ZCARD", "sluicegate:{full}:inflight"]);
    assert_eq!(
        integer(inflight().await),
        1,
        "the settlement is held up by the pause"
    );

    let serve = gateway.begin_shutdown();
    within(ms(5000), "the gateway to stop", serve)
        .await
        .expect("serve task joins")
        .expect("serve returns Ok");
    assert_eq!(
        integer(inflight().await),
        0,
        "serve returned only after the settlement released the lease"
    );
}
