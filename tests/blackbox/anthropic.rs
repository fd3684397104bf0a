//! `kind: anthropic`: chat completions translated to Anthropic's Messages API and back. The
//! recorded Messages streams in proto/ (text, and a tool call in fragments) come back as chat
//! chunks and `[DONE]`; a whole message as a `chat.completion`; what cannot be translated is
//! refused before anything is sent; an `overloaded_error` mid-stream is the final error event,
//! a 529 before the first byte is retried elsewhere; usage from `message_start` and
//! `message_delta` is what the key is charged.

use serde_json::{Value, json};

use crate::support::binary::RunningBinary;
use crate::support::*;

const ANTHROPIC_KEY: &str = "sk-ant-test-key-42";

/// `test-model` on Anthropic-shaped backends at `urls`.
fn anthropic_pool(urls: &[String]) -> GatewayConfig {
    let backends: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!("{{name: claude{i}, kind: anthropic, base_url: '{url}', upstream_model: claude-sonnet-4-5}}")
        })
        .collect();
    GatewayConfig::with_backend(backends.join(", "))
}

#[tokio::test]
async fn a_messages_stream_comes_back_as_chat_chunks_with_the_key_and_version_sent() {
    let upstream = MockUpstream::reply(replaying("anthropic-messages.sse"))
        .start()
        .await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json}}\ntiers: {{basic: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: claude, kind: anthropic, base_url: '{}', upstream_model: claude-sonnet-4-5, api_key_env: ANTHROPIC_TEST_KEY}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        upstream.base_url(),
        sluicegate::auth::hash_key(KEY)
    );
    let gateway =
        RunningBinary::start_with_env(&yaml, &[("ANTHROPIC_TEST_KEY", ANTHROPIC_KEY)]).await;
    let mut body = chat_body(true);
    body["messages"] = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]);
    body["stop"] = json!("END");
    let text = chat_text(&gateway.base(), KEY, &body).await;
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = data_json(&text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["model"] == "test-model"));
    assert_eq!(
        content_of(&text),
        "Hello \r\n\ndata: [DONE]\n\nCafé au lait, s'il vous plaît ☕!",
        "every byte of the text deltas"
    );
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );

    let seen = &upstream.requests()[0];
    assert!(
        seen.request_line.starts_with("POST /v1/messages "),
        "{}",
        seen.request_line
    );
    assert_eq!(seen.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "claude-sonnet-4-5");
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(seen.body["stop_sequences"], json!(["END"]));
    assert_eq!(seen.body["stream"], true);
    assert!(seen.body["max_tokens"].as_u64().is_some(), "required there");
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}])
    );
}

#[tokio::test]
async fn a_tool_call_streams_as_chat_tool_call_fragments_with_usage_when_asked() {
    let upstream = MockUpstream::reply(replaying("anthropic-tools.sse"))
        .start()
        .await;
    let gateway = TestGateway::start(&anthropic_pool(&[upstream.base_url()])).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let text = chat_text(&gateway.url(""), KEY, &body).await;
    let chunks = data_json(&text);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).expect("the fragments make JSON");
    assert_eq!(arguments, json!({"city": "Paris", "unit": "celsius"}));
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .expect("a finish reason");
    assert_eq!(finish, "tool_calls");
    let usage = &chunks.last().expect("chunks")["usage"];
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(472), &json!(89)),
        "the usage chunk, asked for"
    );
    assert_eq!(
        upstream.requests()[0].body["tools"],
        json!([{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
}

#[tokio::test]
async fn a_whole_message_becomes_a_chat_completion_and_its_usage_is_charged() {
    let upstream = MockUpstream::reply(Reply::Status {
        status: 200,
        body: golden("anthropic-message.json"),
        headers: vec![],
    })
    .start()
    .await;
    let config = anthropic_pool(&[upstream.base_url()]).tier("{tokens_per_minute: 100000}");
    let gateway = TestGateway::start(&config).await;
    // A prompt long enough for the reported 428 input tokens to be believed (a backend is
    // never believed for more than a token per request byte).
    let mut body = chat_body(false);
    body["messages"][0]["content"] = json!("What is the weather in Paris? ".repeat(60));
    let answer: Value = post_chat(&gateway.url(""), KEY, &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "test-model");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check the weather in Paris. ☕");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(answer["usage"]["completion_tokens"], 58);
    let totals = usage_totals(&gateway.url(""), "full", 1).await;
    assert_eq!(
        (&totals["prompt_tokens"], &totals["completion_tokens"]),
        (&json!(428), &json!(58)),
        "input (cache reads included) and output tokens: {totals}"
    );
}

#[tokio::test]
async fn what_the_messages_api_cannot_do_is_refused_before_anything_is_sent() {
    let upstream = MockUpstream::reply(replaying("anthropic-messages.sse"))
        .start()
        .await;
    let gateway = TestGateway::start(&anthropic_pool(&[upstream.base_url()])).await;
    for (field, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("temperature", json!(1.5)),
    ] {
        let mut body = chat_body(false);
        body[field] = value;
        let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &body).await).await;
        assert_eq!(
            (status, error["error"]["param"].as_str()),
            (400, Some(field)),
            "{error}"
        );
    }
    assert_eq!(upstream.requests().len(), 0);

    // Beside an OpenAI backend, such a request goes there instead.
    let openai = MockUpstream::stream(2).keep_alive().start().await;
    let config = GatewayConfig::with_backend(format!(
        "{{name: claude, kind: anthropic, base_url: '{}', weight: 1000}}, \
         {{name: gpt, kind: openai, base_url: '{}'}}",
        upstream.base_url(),
        openai.base_url()
    ));
    let gateway = TestGateway::start(&config).await;
    let mut body = chat_body(true);
    body["logprobs"] = json!(true);
    let response = post_chat(&gateway.url(""), KEY, &body).await;
    assert_eq!(response.headers()["x-sluicegate-backend"], "gpt");
    let _ = response.text().await;
    assert_eq!(upstream.requests().len(), 0);
}

#[tokio::test]
async fn overloaded_mid_stream_ends_with_an_error_event_and_a_529_first_is_retried() {
    let golden = golden("anthropic-messages.sse");
    let cut = golden.find("event: content_block_stop").expect("present");
    let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let failing = MockUpstream::reply(Reply::Events {
        pieces: vec![golden[..cut].to_owned(), overloaded.to_owned()],
        cut: false,
    })
    .start()
    .await;
    let gateway = TestGateway::start(&anthropic_pool(&[failing.base_url()])).await;
    let text = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert!(
        text.split("\n\n").all(|event| event != "data: [DONE]"),
        "no [DONE] after a failure"
    );
    let last = data_json(&text).pop().expect("events");
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Overloaded"))
    );

    let busy = MockUpstream::reply(Reply::Status {
        status: 529,
        body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            .into(),
        headers: vec![],
    })
    .start()
    .await;
    let good = MockUpstream::reply(replaying("anthropic-messages.sse"))
        .start()
        .await;
    let config = GatewayConfig::with_backend(format!(
        "{{name: busy, kind: anthropic, base_url: '{}', weight: 1000}}, \
         {{name: good, kind: anthropic, base_url: '{}'}}",
        busy.base_url(),
        good.base_url()
    ));
    let gateway = TestGateway::start(&config).await;
    let response = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-sluicegate-backend"], "good");
    assert!(
        response
            .text()
            .await
            .expect("stream")
            .ends_with("data: [DONE]\n\n")
    );
    assert_eq!(busy.requests().len(), 1);
}
