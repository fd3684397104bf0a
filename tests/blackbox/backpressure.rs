//! Backpressure and cancellation, asserted on what the upstream saw: a client that leaves
//! closes the upstream connection; a client that stops reading stops the upstream's writes,
//! and is cut off after the stall timeout; heartbeats flow while the upstream is slow.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::support::*;

#[tokio::test]
async fn client_disconnect_closes_the_upstream_within_250ms() {
    let upstream = MockUpstream::stream(1000).pace(ms(20)).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;

    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    let mut body = response.bytes_stream();
    let first = within(ms(5000), "the first chunk", body.next()).await;
    assert!(first.is_some(), "stream started");
    drop(body);
    let left = Instant::now();

    let closed = within(
        ms(5000),
        "the upstream connection to close",
        upstream.closed(0),
    )
    .await;
    let took = closed.saturating_duration_since(left);
    assert!(
        took < ms(250),
        "upstream closed {took:?} after the client left"
    );
}

/// A request line and headers for a streamed chat, on a raw socket the test can stop reading.
fn raw_stream_request() -> String {
    let body = chat_body(true).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Samples the upstream's written bytes until they stop growing, and returns that plateau.
async fn plateau(upstream: &MockUpstream) -> u64 {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(ms(500)).await;
        let now = upstream.connections()[0].bytes_written();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// An upstream flooding 60,000 chunks of 1 KiB (about 80 MiB on the wire, far more than every
/// socket buffer between upstream and client can hold), a gateway with `stall_timeout`, and a
/// raw client socket that has received the first response byte and then reads nothing.
async fn flood(stall_timeout: &str) -> (MockUpstream, TestGateway, tokio::net::TcpStream) {
    let big = "x".repeat(1024);
    let tokens: Vec<&str> = std::iter::repeat_n(big.as_str(), 60_000).collect();
    let upstream = MockUpstream::stream_tokens(&tokens).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).stream(&format!(
        "{{heartbeat_interval: 10s, client_stall_timeout: {stall_timeout}}}"
    ));
    let gateway = TestGateway::start(&config).await;
    let mut socket = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    socket
        .write_all(raw_stream_request().as_bytes())
        .await
        .expect("send request");
    let mut head = [0u8; 1];
    socket.read_exact(&mut head).await.expect("response starts");
    (upstream, gateway, socket)
}

#[tokio::test]
async fn a_paused_reader_stalls_the_upstream_instead_of_growing_a_buffer() {
    let (upstream, _gateway, mut socket) = flood("60s").await;

    let stalled_at = within(
        Duration::from_secs(30),
        "the upstream to stall",
        plateau(&upstream),
    )
    .await;
    assert!(
        stalled_at < 40 * 1024 * 1024,
        "upstream stalled after {stalled_at} bytes, not the whole 80 MiB"
    );
    tokio::time::sleep(ms(1000)).await;
    assert_eq!(
        upstream.connections()[0].bytes_written(),
        stalled_at,
        "still stalled a second later"
    );

    // Reading again lets the whole answer through.
    let mut rest = Vec::new();
    within(
        Duration::from_secs(60),
        "the rest of the stream",
        socket.read_to_end(&mut rest),
    )
    .await
    .expect("read");
    let tail = String::from_utf8_lossy(&rest[rest.len().saturating_sub(64)..]).into_owned();
    assert!(
        tail.contains("data: [DONE]"),
        "the stream completed: {tail:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_stall_timeout() {
    let (upstream, _gateway, _socket) = flood("1s").await;
    released_while_stalled(&upstream, Duration::from_secs(20)).await;
}

/// Waits for the gateway to close the upstream of a stalled stream, long before the upstream
/// could have written everything it had.
async fn released_while_stalled(upstream: &MockUpstream, limit: Duration) {
    within(
        limit,
        "the gateway to release the upstream",
        upstream.closed(0),
    )
    .await;
    let written = upstream.connections()[0].bytes_written();
    assert!(
        written < 40 * 1024 * 1024,
        "released while stalled, after {written} bytes"
    );
}

#[tokio::test]
async fn an_http2_stream_its_client_stops_reading_is_cut_off_after_the_stall_timeout() {
    // Over HTTP/2 a client can stop one stream (its flow-control window stays shut) while the
    // connection stays healthy, so no socket write ever stalls: the stream itself must be cut.
    let upstream = MockUpstream::stream(100_000).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .stream("{heartbeat_interval: 10s, client_stall_timeout: 1s}")
        .upstream("{first_byte_timeout: 5s, idle_timeout: 30s, total_timeout: 60s}");
    let gateway = TestGateway::start(&config).await;
    let response = post_chat_h2(&gateway.url(""), &chat_body(true)).await;
    // Hold the response without reading it: its window fills and is never opened again.
    released_while_stalled(&upstream, Duration::from_secs(10)).await;
    let ready = http()
        .get(gateway.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(ready.status(), 200);
    drop(response);
}

#[tokio::test]
async fn heartbeats_flow_while_the_upstream_is_slow_to_start() {
    let upstream = MockUpstream::stream(2).first_delay(ms(1500)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).stream("{heartbeat_interval: 200ms}");
    let gateway = TestGateway::start(&config).await;

    let started = Instant::now();
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < ms(1000),
        "headers committed by the first heartbeat, not the first token"
    );
    let body = response.text().await.expect("body");
    let beats = body.matches(": keep-alive\n\n").count();
    assert!(
        beats >= 3,
        "several heartbeats in 1.5 s at 200 ms: {body:?}"
    );
    assert!(
        body.starts_with(": keep-alive\n\n"),
        "heartbeats come first"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(content_of(&body), "tok0 tok1 ");
}

#[tokio::test]
async fn a_failure_after_heartbeats_is_a_200_stream_with_an_error_event() {
    let upstream = MockUpstream::reply(Reply::Hang).start().await;
    let config = GatewayConfig::openai(&upstream.base_url())
        .stream("{heartbeat_interval: 100ms}")
        .upstream("{first_byte_timeout: 600ms, idle_timeout: 5s, total_timeout: 30s}");
    let gateway = TestGateway::start(&config).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(
        response.status(),
        200,
        "heartbeats committed the status line"
    );
    let body = response.text().await.expect("body");
    assert!(body.starts_with(": keep-alive\n\n"));
    assert!(!body.contains("[DONE]"));
    assert!(
        body.ends_with("\"code\":\"upstream_first_byte_timeout\"}}\n\n"),
        "{body:?}"
    );
}
