//! `POST /v1/completions` (the legacy text completions) through the same relay, rewrite and
//! limits as chat: routed only to backends that serve it, OpenAI's default output cap written
//! upstream, the model named as the client named it in every chunk, usage kept from the client
//! unless asked for.

use serde_json::{Value, json};

use crate::support::*;

/// A legacy stream: two text chunks, a finishing chunk, the usage chunk, `[DONE]`.
fn legacy_stream() -> Reply {
    let chunk = |text: &str, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "upstream-model",
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let usage = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "upstream-model",
        "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}});
    Reply::Status {
        status: 200,
        body: format!(
            "{}{}{}data: {usage}\n\ndata: [DONE]\n\n",
            chunk("Hello", Value::Null),
            chunk(" there", Value::Null),
            chunk("", json!("stop"))
        ),
        headers: vec![("content-type".into(), "text/event-stream".into())],
    }
}

fn legacy_config(url: &str) -> GatewayConfig {
    GatewayConfig::with_backend(format!(
        "{{name: up, kind: openai, base_url: '{url}', upstream_model: upstream-model, apis: [completions]}}"
    ))
}

async fn post_completions(base: &str, body: &Value) -> reqwest::Response {
    post_json(base, "/v1/completions", KEY, body).await
}

#[tokio::test]
async fn a_legacy_stream_is_relayed_in_the_clients_names_with_openais_default_cap() {
    let upstream = MockUpstream::reply(legacy_stream()).start().await;
    let gateway = TestGateway::start(&legacy_config(&upstream.base_url())).await;
    let response = post_completions(
        &gateway.url(""),
        &json!({"model": "test-model", "prompt": "Say hello", "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("stream");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("JSON event"))
        .collect();
    assert_eq!(events.len(), 3, "the usage chunk was not asked for: {text}");
    assert!(events.iter().all(|e| e["model"] == "test-model"), "{text}");
    let said: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(said, "Hello there");
    assert!(text.ends_with("data: [DONE]\n\n"));

    let seen = upstream.requests();
    assert!(
        seen[0].request_line.starts_with("POST /v1/completions "),
        "{}",
        seen[0].request_line
    );
    assert_eq!(seen[0].body["model"], "upstream-model");
    assert_eq!(
        seen[0].body["max_tokens"], 16,
        "OpenAI's legacy default, not the tier's"
    );
    assert_eq!(seen[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_whole_legacy_completion_comes_back_renamed_and_the_routes_stay_apart() {
    let upstream = MockUpstream::reply(Reply::Status {
        status: 200,
        body: json!({"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "text": "Hi!", "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
        .to_string(),
        headers: vec![],
    })
    .start()
    .await;
    let gateway = TestGateway::start(&legacy_config(&upstream.base_url())).await;
    let body = json!({"model": "test-model", "prompt": ["Say hi"], "max_tokens": 5});
    let response = post_completions(&gateway.url(""), &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(
        (
            answer["model"].as_str(),
            answer["choices"][0]["text"].as_str()
        ),
        (Some("test-model"), Some("Hi!"))
    );
    assert_eq!(upstream.requests()[0].body["max_tokens"], 5);

    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let chat_only = TestGateway::start(&GatewayConfig::mock(2, "0ms")).await;
    let (status, _) = error_of(post_completions(&chat_only.url(""), &body).await).await;
    assert_eq!(status, 404);
    let (status, error) = error_of(
        post_completions(
            &gateway.url(""),
            &json!({"model": "test-model", "prompt": []}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("prompt"))
    );
    assert_eq!(upstream.requests().len(), 1, "nothing else was sent");
}
