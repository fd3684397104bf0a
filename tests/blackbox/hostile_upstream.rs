//! The inline HTTP/1.1 client against upstreams that misbehave on the wire: floods that must
//! not pin a thread, framing RFC 9112 forbids, connections that close at awkward moments, early
//! answers, and idle connections that must not linger.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// A short SSE answer up to `[DONE]`, without the body's terminating chunk.
fn sse_answer() -> Vec<u8> {
    let event = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
    [
        SSE_HEAD.to_vec(),
        chunk(&format!("{event}\n\n")),
        chunk("data: [DONE]\n\n"),
    ]
    .concat()
}

/// Writes trailer fields until the gateway stops reading.
async fn flood_trailers(conn: &mut RawConn) {
    let _ = conn.write(b"0\r\n").await;
    let lines = b"x-flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(300);
    while conn.write(&lines).await {}
}

fn one_backend(upstream: &RawUpstream) -> GatewayConfig {
    GatewayConfig::openai(&upstream.base_url())
        .upstream("{max_attempts: 1, first_byte_timeout: 5s, idle_timeout: 5s, total_timeout: 20s}")
}

#[tokio::test]
async fn a_trailer_flood_after_done_is_cut_off_without_pinning_a_thread() {
    let upstream = RawUpstream::start(|mut conn| async move {
        if conn.read_request().await {
            let _ = conn.write(&sse_answer()).await;
            flood_trailers(&mut conn).await;
        }
    })
    .await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    let body = within(ms(5_000), "the stream", async {
        chat_text(&gateway.url(""), KEY, &chat_body(true)).await
    })
    .await;
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    within(ms(3_000), "the flooding connection to be closed", async {
        while upstream.finished() < 1 {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let health = within(ms(2_000), "the gateway to answer", async {
        http().get(gateway.url("/healthz")).send().await
    })
    .await
    .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_trailer_flood_in_a_read_body_is_a_protocol_error() {
    let upstream = RawUpstream::start(|mut conn| async move {
        if conn.read_request().await {
            let json = r#"{"id":"c","object":"chat.completion","choices":[]}"#;
            let _ = conn.write(&[SSE_HEAD.to_vec(), chunk(json)].concat()).await;
            flood_trailers(&mut conn).await;
        }
    })
    .await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    let response = within(ms(5_000), "the answer", async {
        post_chat(&gateway.url(""), KEY, &chat_body(false)).await
    })
    .await;
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_protocol_error"))
    );
}

/// What a client gets when the upstream answers every request with `response`.
async fn answer_to(response: &'static [u8]) -> (u16, Value) {
    let upstream = RawUpstream::start(move |mut conn| async move {
        if conn.read_request().await {
            let _ = conn.write(response).await;
            conn.until_closed().await;
        }
    })
    .await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    error_of(response).await
}

#[tokio::test]
async fn framing_rfc_9112_forbids_is_a_502() {
    let rows: [(&str, &'static [u8]); 6] = [
        (
            "conflicting content-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 40\r\n\r\n{}",
        ),
        ("a signed content-length", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n{}"),
        (
            "transfer-encoding on HTTP/1.0",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "a chunk size line ending in a bare LF",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\n{}\r\n0\r\n\r\n",
        ),
        (
            "101 switching protocols",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        ),
        (
            "a garbage status line",
            b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\n{}",
        ),
    ];
    for (what, response) in rows {
        let (status, body) = answer_to(response).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (502, Some("upstream_protocol_error")),
            "{what}: {body}"
        );
    }
}

/// Answers each request on a connection with `response`, as long as the gateway sends more.
async fn keep_answering(conn: &mut RawConn, response: &[u8]) {
    while conn.read_request().await {
        if !conn.write(response).await {
            return;
        }
    }
}

#[tokio::test]
async fn responses_that_must_not_keep_their_connection_are_not_pooled() {
    let rows: [(&str, &'static [u8]); 2] = [
        (
            "transfer-encoding beside content-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 300\r\ntransfer-encoding: chunked\r\n\r\n\
              4d\r\n{\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[],\"usage\":{\"total_tokens\":2}}\r\n0\r\n\r\n",
        ),
        (
            "connection: keep-alive, close",
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 50\r\n\r\n\
              {\"id\":\"c\",\"object\":\"chat.completion\",\"choices\":[]}",
        ),
    ];
    for (what, response) in rows {
        let upstream =
            RawUpstream::start(
                move |mut conn| async move { keep_answering(&mut conn, response).await },
            )
            .await;
        let gateway = TestGateway::start(&one_backend(&upstream)).await;
        for _ in 0..2 {
            let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
            assert_eq!(response.status(), 200, "{what}");
        }
        assert_eq!(
            upstream.connections(),
            2,
            "{what}: one connection per request"
        );
    }
}

#[tokio::test]
async fn a_pooled_connection_closed_late_is_an_error_not_a_silent_resend() {
    let upstream = RawUpstream::start(|mut conn| async move {
        if conn.index > 0 {
            keep_answering(&mut conn, b"").await;
            return;
        }
        // Answer the first request, then read the second and close 300 ms later: the backend
        // may have acted on it, so it must not be sent again behind the client's back.
        if conn.read_request().await && conn.write_completion().await && conn.read_request().await {
            tokio::time::sleep(ms(300)).await;
        }
    })
    .await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    assert_eq!(
        post_chat(&gateway.url(""), KEY, &chat_body(false))
            .await
            .status(),
        200
    );
    let (status, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_disconnected"))
    );
    assert_eq!(upstream.requests(), 2, "the second request was sent once");
}

/// An upstream whose first connection answers one request, then closes as soon as the next
/// request's head arrives, without reading it (a backend closing an idle connection just as it
/// is reused); later connections answer everything.
async fn closes_when_reused() -> RawUpstream {
    RawUpstream::start(|mut conn| async move {
        if conn.index == 0 {
            if conn.read_request().await && conn.write_completion().await {
                let _ = conn.read_request_head().await;
            }
            return;
        }
        while conn.read_request().await && conn.write_completion().await {}
    })
    .await
}

#[tokio::test]
async fn a_request_meeting_a_just_closed_pooled_connection_is_resent_once() {
    let upstream = closes_when_reused().await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    for _ in 0..2 {
        assert_eq!(
            post_chat(&gateway.url(""), KEY, &chat_body(false))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        (upstream.requests(), upstream.connections()),
        (3, 2),
        "resent once, on a fresh connection"
    );
}

#[tokio::test]
async fn a_request_the_backend_would_store_is_never_resent() {
    let upstream = closes_when_reused().await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    let mut stored = chat_body(false);
    stored["store"] = true.into();
    assert_eq!(
        post_chat(&gateway.url(""), KEY, &stored).await.status(),
        200
    );
    let (status, body) = error_of(post_chat(&gateway.url(""), KEY, &stored).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_disconnected"))
    );
    assert_eq!(
        upstream.requests(),
        2,
        "sent once: sending it twice could store it twice"
    );
}

#[tokio::test]
async fn dead_pooled_connections_cost_one_resend_not_one_per_connection() {
    let upstream = RawUpstream::start(|mut conn| async move {
        // Every connection answers one request, then closes when the next arrives.
        if conn.read_request().await && conn.write_completion().await {
            let _ = conn.read_request().await;
        }
    })
    .await;
    let gateway = TestGateway::start(&one_backend(&upstream)).await;
    // Five concurrent requests leave five pooled connections.
    let burst = (0..5).map(|_| post_chat_owned(gateway.url(""), chat_body(false)));
    for response in futures_util::future::join_all(burst).await {
        assert_eq!(response.status(), 200);
    }
    let pooled = upstream.connections();
    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    assert_eq!(response.status(), 200, "answered on a fresh connection");
    assert_eq!(
        upstream.connections() - pooled,
        1,
        "one resend after the first dead connection, not one per pooled connection"
    );
}

async fn post_chat_owned(base: String, body: Value) -> reqwest::Response {
    post_chat(&base, KEY, &body).await
}

#[tokio::test]
async fn an_early_413_while_the_body_is_being_written_reaches_the_client() {
    let upstream = RawUpstream::start(|mut conn| async move {
        // Refuse after the head, without reading the body, and close.
        if conn.read_request_head().await {
            let body = r#"{"error":{"message":"request entity too large","type":"invalid_request_error"}}"#;
            let response = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write(response.as_bytes()).await;
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await;
    let config = one_backend(&upstream).server("{max_body_bytes: 16777216}");
    let gateway = TestGateway::start(&config).await;
    let mut body = chat_body(false);
    body["messages"][0]["content"] = "x".repeat(12 * 1024 * 1024).into();
    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &body).await).await;
    assert_eq!(status, 413, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{error}"
    );
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_after_pool_idle_timeout() {
    let upstream = MockUpstream::stream(1).keep_alive().start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .upstream("{pool_idle_timeout: 300ms, total_timeout: 10s}");
    let gateway = TestGateway::start(&config).await;
    let body = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert!(body.ends_with("[DONE]\n\n"));
    let closed = within(
        ms(3_000),
        "the idle connection to be reaped",
        upstream.closed(0),
    )
    .await;
    let idle_for = closed - upstream.connections()[0].opened;
    assert!(idle_for >= Duration::from_millis(300), "{idle_for:?}");
}
