//! Graceful shutdown of the real binary: SIGTERM lets open streams finish within the grace
//! period and exits 0; streams still open when it ends get a final error event.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::support::binary::RunningBinary;
use crate::support::*;

fn binary_config(upstream: &MockUpstream, grace: &str) -> String {
    GatewayConfig::openai(&upstream.base_url())
        .server(&format!(
            "{{listen: '127.0.0.1:0', shutdown_grace: {grace}}}"
        ))
        .yaml()
        .replace("level: warn", "level: info")
}

type Chunks =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Starts a stream through `base` and returns its first chunk's text and the rest of the body.
async fn open_stream(base: &str) -> (String, Chunks) {
    let mut body: Chunks = Box::pin(post_chat(base, KEY, &chat_body(true)).await.bytes_stream());
    let first = within(ms(5000), "the first chunk", body.next())
        .await
        .expect("a chunk")
        .expect("bytes");
    (String::from_utf8_lossy(&first).into_owned(), body)
}

/// Reads a started stream to its end, with no transport error.
async fn read_to_end(mut text: String, mut body: Chunks) -> String {
    while let Some(chunk) = within(ms(5000), "the stream to go on", body.next()).await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("no transport error"),
        ));
    }
    text
}

async fn exits_zero(gateway: &mut RunningBinary) {
    let status = within(
        Duration::from_secs(10),
        "the process to exit",
        gateway.child.wait(),
    )
    .await
    .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn sigterm_lets_streams_finish_then_exits_zero() {
    let upstream = MockUpstream::stream(15).pace(ms(100)).start().await;
    let mut gateway = RunningBinary::start(&binary_config(&upstream, "10s")).await;
    let streams = vec![
        open_stream(&gateway.base()).await,
        open_stream(&gateway.base()).await,
    ];
    gateway.signal("TERM");
    let signalled = Instant::now();

    // New connections are refused once draining starts.
    within(ms(5000), "the listener to close", async {
        while tokio::net::TcpStream::connect(gateway.addr).await.is_ok() {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    for (first, body) in streams {
        let text = read_to_end(first, body).await;
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "the stream finished normally"
        );
        assert_eq!(
            content_of(&text).matches("tok").count(),
            15,
            "nothing was cut"
        );
    }
    exits_zero(&mut gateway).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exited once streams ended, not at the grace deadline"
    );
}

#[tokio::test]
async fn streams_open_past_the_grace_period_get_a_final_error_event() {
    let upstream = MockUpstream::stream(100).pace(ms(100)).start().await;
    let mut gateway = RunningBinary::start(&binary_config(&upstream, "500ms")).await;
    let (first, body) = open_stream(&gateway.base()).await;
    gateway.signal("TERM");
    let text = read_to_end(first, body).await;
    assert!(!text.contains("[DONE]"), "cut short, so no [DONE]");
    assert!(
        text.ends_with("\"code\":\"shutting_down\"}}\n\n"),
        "final event: {text:?}"
    );
    exits_zero(&mut gateway).await;
    within(ms(2000), "the upstream to be released", upstream.closed(0)).await;
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_draining_starts() {
    let upstream = MockUpstream::stream(30).pace(ms(100)).start().await;
    let mut gateway = TestGateway::start(
        &GatewayConfig::openai(&upstream.base_url()).server("{shutdown_grace: 10s}"),
    )
    .await;
    // Ready once the tokenizers are loaded.
    within(ms(10_000), "/readyz to say ready", async {
        while http()
            .get(gateway.url("/readyz"))
            .send()
            .await
            .expect("answer")
            .status()
            != 200
        {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;

    // A request whose head is still arriving when the signal comes is answered on the same
    // connection, and /readyz then says the instance is draining.
    let mut socket = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("partial head");
    let stream = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    let serving = gateway.begin_shutdown();
    tokio::time::sleep(ms(100)).await;
    socket.write_all(b"\r\n").await.expect("finish head");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(ms(3000), socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "draining readiness: {answer:?}"
    );
    assert!(answer.contains("draining"));
    drop(stream);
    within(Duration::from_secs(5), "serve to return", serving)
        .await
        .expect("join")
        .expect("serve ok");
}

/// A connection that has not said a byte when the drain begins is closed at once (as hyper
/// closes an idle one), so it does not hold the drain up for its header timeout.
#[tokio::test]
async fn a_silent_connection_does_not_hold_up_the_drain() {
    let mut gateway = TestGateway::start(&GatewayConfig::mock(1, "0ms")).await;
    let mut silent = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    tokio::time::sleep(ms(50)).await;
    let serving = gateway.begin_shutdown();
    within(Duration::from_secs(2), "serve to return", serving)
        .await
        .expect("join")
        .expect("serve ok");
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(ms(1000), silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed without an answer: {read:?}"
    );
}
