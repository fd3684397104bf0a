//! The inline upstream client's connections: kept alive and reused after a complete answer,
//! closed (never reused) when a client leaves mid-stream, replaced when the backend closed
//! them while idle.

use serde_json::json;

use crate::support::*;

async fn stream_to_end(gateway: &TestGateway) -> String {
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

#[tokio::test]
async fn finished_streams_and_completions_reuse_one_connection() {
    let upstream = MockUpstream::stream(3).keep_alive().start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    for _ in 0..3 {
        assert!(stream_to_end(&gateway).await.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(upstream.requests().len(), 3);
    assert_eq!(
        upstream.connections().len(),
        1,
        "one keep-alive connection served every stream"
    );

    let completion =
        json!({"id": "c", "object": "chat.completion", "model": "upstream-model", "choices": []});
    let reply = Reply::Status {
        status: 200,
        body: completion.to_string(),
        headers: vec![],
    };
    let upstream = MockUpstream::reply(reply).keep_alive().start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    for _ in 0..3 {
        assert_eq!(
            post_chat(&gateway.url(""), KEY, &chat_body(false))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        upstream.connections().len(),
        1,
        "one keep-alive connection served every completion"
    );
}

#[tokio::test]
async fn a_stream_the_client_left_is_closed_not_reused() {
    let upstream = MockUpstream::stream(200)
        .pace(ms(10))
        .keep_alive()
        .start()
        .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    let mut body = response.bytes_stream();
    within(
        ms(5000),
        "the first chunk",
        futures_util::StreamExt::next(&mut body),
    )
    .await;
    drop(body);
    within(
        ms(2000),
        "the upstream connection to close",
        upstream.closed(0),
    )
    .await;

    assert!(
        within(ms(10_000), "the next stream", stream_to_end(&gateway))
            .await
            .ends_with("[DONE]\n\n")
    );
    assert_eq!(
        upstream.connections().len(),
        2,
        "the abandoned connection was not reused"
    );
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_replaced() {
    let upstream = MockUpstream::stream(2)
        .closes_idle_connections()
        .start()
        .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    for i in 0..3 {
        if i > 0 {
            within(
                ms(2000),
                "the backend to close the idle connection",
                upstream.closed(i - 1),
            )
            .await;
        }
        assert!(
            stream_to_end(&gateway).await.ends_with("data: [DONE]\n\n"),
            "no client-visible error"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        3,
        "each request reached the backend once"
    );
}
