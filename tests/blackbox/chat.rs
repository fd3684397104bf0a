//! The happy paths: streamed bytes, usage on and off, non-streaming, what goes upstream.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn streams_rewritten_chunks_and_ends_right_after_done() {
    let upstream = MockUpstream::stream_tokens(&["Hello", " \r\n\ndata: [DONE]\n\n", "!"])
        .start()
        .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;

    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;

    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(
        headers.get("content-length").is_none(),
        "a stream has no content-length"
    );
    assert!(headers.contains_key("x-request-id"));
    let body = response.text().await.expect("stream completes");
    assert!(
        body.ends_with("}\n\ndata: [DONE]\n\n"),
        "ends with exactly one [DONE]: {body:?}"
    );
    assert_eq!(
        body.matches("data: [DONE]\n\n").count(),
        1,
        "model output is not re-framed"
    );
    for event in events(&body) {
        assert!(event.starts_with("data: "), "only data events: {event:?}");
        assert!(
            !event.contains("upstream-model"),
            "the upstream model name never leaks"
        );
    }
    let chunks = data_json(&body);
    assert_eq!(
        chunks.len(),
        4,
        "three content chunks and the finish chunk, no usage chunk"
    );
    assert!(
        chunks.iter().all(|c| c["model"] == "test-model"),
        "model alias restored"
    );
    assert_eq!(
        content_of(&body),
        "Hello \r\n\ndata: [DONE]\n\n!",
        "content bytes survive exactly"
    );
}

#[tokio::test]
async fn usage_chunk_only_when_the_client_asks() {
    let upstream = MockUpstream::stream(3).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;

    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let with_usage = chat_text(&gateway.url(""), KEY, &body).await;
    let without = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;

    let last = data_json(&with_usage).pop().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(last["model"], "test-model");
    assert!(
        data_json(&without).iter().all(|c| c.get("usage").is_none()),
        "usage chunk dropped"
    );
    for seen in upstream.requests() {
        assert_eq!(
            seen.body["stream_options"]["include_usage"], true,
            "usage is always asked upstream"
        );
    }
}

#[tokio::test]
async fn a_usage_chunk_in_another_servers_shape_reaches_only_a_client_that_asked() {
    // LiteLLM's proxy sends its usage chunk with `"choices":[{"index":0,"delta":{}}]`.
    let golden = include_str!("../../proto/litellm-usage.sse");
    let upstream = RawUpstream::start(move |mut conn| async move {
        while conn.read_request().await {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                golden.len()
            );
            if !conn.write(head.as_bytes()).await || !conn.write(golden.as_bytes()).await {
                return;
            }
        }
    })
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let without = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    let chunks = data_json(&without);
    assert_eq!(
        chunks.len(),
        4,
        "the usage-only chunk is dropped: {without}"
    );
    assert!(
        chunks.iter().all(|c| c["usage"].is_null()),
        "no usage for a client that did not ask: {without}"
    );
    assert_eq!(content_of(&without), "Hi there!");

    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let with_usage = chat_text(&gateway.url(""), KEY, &body).await;
    assert_eq!(data_json(&with_usage)[3]["usage"]["total_tokens"], 9);
}

#[tokio::test]
async fn non_streaming_answer_has_alias_and_usage() {
    let completion = json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    });
    let upstream = MockUpstream::reply(Reply::Status {
        status: 200,
        body: completion.to_string(),
        headers: vec![],
    })
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;

    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("JSON body");
    let mut expected = completion;
    expected["model"] = json!("test-model");
    assert_eq!(body, expected, "only the model changes");
}

#[tokio::test]
async fn upstream_gets_unknown_fields_the_backend_key_and_the_request_id() {
    let upstream = MockUpstream::stream(1).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let mut body = chat_body(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    body["response_format"] = json!({"type": "json_object"});
    body["seed"] = json!(42);
    body["logprobs"] = json!(true);
    body["api_base"] = json!("http://attacker.invalid");
    body["api_key"] = json!("sk-attacker");

    let response = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", "trace-abc.123")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.headers()["x-request-id"], "trace-abc.123");
    response.text().await.expect("stream completes");

    let seen = &upstream.requests()[0];
    assert_eq!(seen.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(seen.body["model"], "upstream-model");
    for field in ["tools", "response_format", "seed", "logprobs"] {
        assert_eq!(
            seen.body[field], body[field],
            "{field} reaches the upstream untouched"
        );
    }
    assert!(seen.body.get("api_base").is_none() && seen.body.get("api_key").is_none());
    assert_eq!(seen.header("x-request-id"), Some("trace-abc.123"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's key is never forwarded"
    );
}

#[tokio::test]
async fn in_process_mock_backend_streams_without_any_upstream() {
    let gateway = TestGateway::start(&GatewayConfig::mock(5, "1ms")).await;

    let body = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(content_of(&body), "The quick brown fox jumps ");

    let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
    let json: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(json["model"], "test-model");
    assert_eq!(json["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn models_list_and_lookup_show_only_allowed_models() {
    let gateway = TestGateway::start(&GatewayConfig::mock(1, "1ms")).await;
    let list = |key: &'static str| {
        let url = gateway.url("/v1/models");
        async move {
            http()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("answer")
                .json::<serde_json::Value>()
                .await
                .expect("JSON")
        }
    };
    let ids = |v: serde_json::Value| -> Vec<String> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids(list(KEY).await), ["test-model", "other-model"]);
    assert_eq!(ids(list(OTHER_KEY).await), ["other-model"]);

    let one = http()
        .get(gateway.url("/v1/models/other-model"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .expect("answer");
    assert_eq!(one.status(), 200);
    let one: serde_json::Value = one.json().await.expect("JSON");
    assert_eq!(
        (one["id"].as_str(), one["object"].as_str()),
        (Some("other-model"), Some("model"))
    );
    let hidden = http()
        .get(gateway.url("/v1/models/test-model"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .expect("answer");
    let (status, body) = error_of(hidden).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn probes_answer_without_a_key() {
    let gateway = TestGateway::start(&GatewayConfig::mock(1, "1ms")).await;
    for path in ["/healthz", "/readyz"] {
        let response = http().get(gateway.url(path)).send().await.expect("answer");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn streams_over_h2c_too() {
    let upstream = MockUpstream::stream(3).start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let response = post_chat_h2(&gateway.url(""), &chat_body(true)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.expect("body");
    assert_eq!(content_of(&body), "tok0 tok1 tok2 ");
    assert!(body.ends_with("data: [DONE]\n\n"));
}
