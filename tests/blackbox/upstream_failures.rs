//! Upstream failures: before the first byte they are statuses (502/504, 4xx passed through),
//! after it a final error event with no `[DONE]`.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

fn status(status: u16, body: &str, headers: Vec<(String, String)>) -> Reply {
    Reply::Status {
        status,
        body: body.into(),
        headers,
    }
}

/// The parsed final error event of a stream, asserting no `[DONE]` follows it.
fn final_error(body: &str) -> serde_json::Value {
    assert!(
        !body.contains("[DONE]"),
        "no [DONE] after an error: {body:?}"
    );
    let last = events(body)
        .pop()
        .expect("events")
        .strip_prefix("data: ")
        .expect("a data event");
    let event: serde_json::Value = serde_json::from_str(last).expect("JSON error event");
    assert!(
        event["error"]["message"].is_string(),
        "OpenAI error shape: {event}"
    );
    event
}

#[tokio::test]
async fn upstream_500_is_502_without_upstream_details() {
    let upstream = MockUpstream::reply(status(
        500,
        r#"{"error":{"message":"secret stack trace at 10.1.2.3"}}"#,
        vec![],
    ))
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    for stream in [true, false] {
        let (code, body) =
            error_of(post_chat(&gateway.url(""), KEY, &chat_body(stream)).await).await;
        assert_eq!(code, 502);
        assert_eq!(body["error"]["code"], "upstream_failed");
        let text = body.to_string();
        assert!(
            !text.contains("secret") && !text.contains(&upstream.addr.to_string()),
            "nothing internal leaks: {text}"
        );
    }
}

#[tokio::test]
async fn a_passed_through_4xx_masks_keys_and_urls_after_any_whitespace() {
    let message = "invalid request:\nsk-live-0123456789 sent to\thttp://10.1.2.3:8000/v1\r\nwith \
                   'Authorization: bearer\tmy-short-key'; retry";
    let body = serde_json::json!({"error": {"message": message}}).to_string();
    let upstream = MockUpstream::reply(status(400, &body, vec![]))
        .start()
        .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let (code, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(code, 400);
    assert_eq!(
        body["error"]["message"],
        "invalid request: [redacted] sent to [redacted] with 'Authorization: bearer [redacted] retry",
        "masked, and the words around the line breaks kept apart"
    );
}

#[tokio::test]
async fn refused_connection_is_502() {
    let gateway = TestGateway::start(&GatewayConfig::openai(&refusing_url())).await;
    let (code, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(true)).await).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (502, Some("upstream_unavailable"))
    );
}

#[tokio::test]
async fn hang_before_first_byte_is_504_after_the_first_byte_timeout() {
    let upstream = MockUpstream::reply(Reply::Hang).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .upstream("{first_byte_timeout: 500ms, idle_timeout: 5s, total_timeout: 30s}");
    let gateway = TestGateway::start(&config).await;
    for stream in [true, false] {
        let started = Instant::now();
        let response = within(
            ms(5000),
            "the 504",
            post_chat(&gateway.url(""), KEY, &chat_body(stream)),
        )
        .await;
        let elapsed = started.elapsed();
        let (code, body) = error_of(response).await;
        assert_eq!(
            (code, body["error"]["code"].as_str()),
            (504, Some("upstream_first_byte_timeout")),
            "stream={stream}"
        );
        assert!(
            elapsed >= ms(500) && elapsed < ms(3000),
            "fired at the timeout, took {elapsed:?}"
        );
    }
    within(
        ms(2000),
        "the hung upstream to be released",
        upstream.closed(1),
    )
    .await;
}

#[tokio::test]
async fn drop_mid_stream_ends_with_an_error_event_and_no_done() {
    let upstream = MockUpstream::stream(10).drop_after(4).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200, "the stream had started");
    let body = response.text().await.expect("body ends cleanly");
    assert_eq!(
        content_of(&body),
        "tok0 tok1 tok2 tok3 ",
        "everything relayed before the drop"
    );
    let event = final_error(&body);
    assert_eq!(event["error"]["code"], "upstream_disconnected");
}

#[tokio::test]
async fn in_band_upstream_error_becomes_the_final_error_event() {
    let upstream = MockUpstream::stream(5).error_after(2).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let body = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    let event = final_error(&body);
    assert_eq!(event["error"]["code"], "upstream_error");
    assert!(
        event["error"]["message"]
            .as_str()
            .expect("message")
            .contains("out of KV cache")
    );
}

#[tokio::test]
async fn idle_upstream_mid_stream_ends_with_an_idle_timeout_event() {
    let upstream = MockUpstream::stream(3).pace(ms(2000)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .upstream("{first_byte_timeout: 5s, idle_timeout: 400ms, total_timeout: 30s}");
    let gateway = TestGateway::start(&config).await;
    let body = within(ms(5000), "the stream to end", async {
        chat_text(&gateway.url(""), KEY, &chat_body(true)).await
    })
    .await;
    assert_eq!(content_of(&body), "tok0 ");
    assert_eq!(final_error(&body)["error"]["code"], "upstream_idle_timeout");
}

#[tokio::test]
async fn upstream_client_errors_pass_through_sanitised() {
    let rejection = r#"{"error":{"message":"This model's maximum context length is 8192 tokens, see https://internal.example/docs","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let upstream = MockUpstream::reply(status(400, rejection, vec![]))
        .start()
        .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let (code, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(true)).await).await;
    assert_eq!(code, 400);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("This model's maximum context length is 8192 tokens"),
        "{message}"
    );
    assert!(
        !message.contains("internal.example"),
        "URLs are masked: {message}"
    );
}

#[tokio::test]
async fn upstream_refusing_the_gateway_key_is_502_and_429_keeps_retry_after() {
    let upstream = MockUpstream::reply(status(
        401,
        r#"{"error":{"message":"bad key sk-live-123"}}"#,
        vec![],
    ))
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let (code, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(
        code, 502,
        "the client's key was fine; the gateway's was not"
    );
    assert!(!body.to_string().contains("sk-live"));

    let busy = MockUpstream::reply(status(
        429,
        r#"{"error":{"message":"slow down"}}"#,
        vec![("retry-after".into(), "7".into())],
    ))
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&busy.base_url())).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    assert_eq!(response.headers()["retry-after"], "7");
    let (code, body) = error_of(response).await;
    assert_eq!(
        (code, body["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
}

#[tokio::test]
async fn total_deadline_bounds_a_slow_stream() {
    let upstream = MockUpstream::stream(50).pace(ms(100)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .upstream("{first_byte_timeout: 5s, idle_timeout: 5s, total_timeout: 700ms}");
    let gateway = TestGateway::start(&config).await;
    let started = Instant::now();
    let body = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(
        final_error(&body)["error"]["code"],
        "upstream_total_timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended near the deadline"
    );
}
