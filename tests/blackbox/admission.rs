//! `max_concurrent_requests`: past the cap a request is refused at once with 503 and
//! `retry-after`, and admitted again once a slot frees up.

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::support::*;

#[tokio::test]
async fn over_the_cap_is_503_with_retry_after_at_once() {
    let upstream = MockUpstream::stream(20).pace(ms(50)).start().await;
    let config = GatewayConfig::openai(&upstream.base_url()).server("{max_concurrent_requests: 2}");
    let gateway = TestGateway::start(&config).await;

    let first = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    let second = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let started = Instant::now();
    let refused = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert!(
        started.elapsed() < ms(500),
        "refused immediately, not queued"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["retry-after-ms"], "1000");
    let (status, body) = error_of(refused).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("overloaded"))
    );

    // Finishing one stream frees its slot.
    let mut finished = first.bytes_stream();
    while finished.next().await.is_some() {}
    drop(finished);
    let admitted = until_admitted(
        &gateway.url(""),
        KEY,
        &chat_body(true),
        ms(2000),
        "a freed slot",
    )
    .await;
    assert_ne!(admitted.status(), 503);
    drop(second);
}
