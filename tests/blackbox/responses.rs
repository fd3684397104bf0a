//! `POST /v1/responses` and the stored-response routes through the gateway: the typed event
//! stream passed through byte for byte (model aside) at any split of the upstream's writes,
//! usage taken from the terminal event, a failure after the first byte told as a Responses
//! `event: error`, stored responses followed to the backend and key that made them (in
//! process, and through Redis across replicas), and limits exact across replicas.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// The golden stream as the client should see it: only the model renamed.
fn as_client_sees(golden: &str) -> String {
    golden.replace("\"gpt-4.1-mini-2025-04-14\"", "\"test-model\"")
}

/// `test-model` on `backends` (YAML flow items), which serve the Responses API.
fn responses_pool(urls: &[String]) -> GatewayConfig {
    let backends: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!("{{name: b{i}, kind: openai, base_url: '{url}', upstream_model: upstream-model, apis: [responses]}}")
        })
        .collect();
    GatewayConfig::with_backend(backends.join(", "))
}

/// Two in-process mock backends serving the Responses API, each with its own store.
fn two_mocks() -> GatewayConfig {
    GatewayConfig::with_backend(
        "{name: m0, kind: mock, mock: {tokens: 3, pace: 0ms}, apis: [responses]}, \
         {name: m1, kind: mock, mock: {tokens: 3, pace: 0ms}, apis: [responses]}"
            .into(),
    )
}

async fn post_responses(base: &str, key: &str, body: &Value) -> reqwest::Response {
    post_json(base, "/v1/responses", key, body).await
}

async fn call_stored(
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::Response {
    http()
        .request(method, format!("{base}/v1/responses/{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("answer")
}

fn backend_of(response: &reqwest::Response) -> String {
    response.headers()["x-sluicegate-backend"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Event names in order.
fn event_names(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect()
}

#[tokio::test]
async fn a_passed_through_stream_is_the_upstreams_bytes_with_the_alias_at_any_split() {
    let golden = golden("openai-responses.sse");
    // Splits inside an event, inside a line, inside the multi-byte dash and between events.
    let dash = golden.find('—').expect("a multi-byte character");
    for cuts in [
        vec![7],
        vec![golden.len() / 2, dash + 1],
        vec![dash - 1, dash + 2],
    ] {
        let mut pieces = Vec::new();
        let mut from = 0;
        for cut in cuts {
            // A piece must be valid UTF-8 for the scripted upstream; cut on a char boundary.
            let cut = (cut..golden.len())
                .find(|i| golden.is_char_boundary(*i))
                .expect("a boundary");
            pieces.push(golden[from..cut].to_owned());
            from = cut;
        }
        pieces.push(golden[from..].to_owned());
        let upstream = MockUpstream::reply(Reply::Events { pieces, cut: false })
            .start()
            .await;
        let config = responses_pool(&[upstream.base_url()]).tier("{tokens_per_minute: 100000}");
        let gateway = TestGateway::start(&config).await;
        let body = json!({"model": "test-model", "input": "hi", "stream": true, "max_output_tokens": 64, "api_key": "sk-elsewhere"});
        let response = post_responses(&gateway.url(""), KEY, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "typed events are SSE"
        );
        let text = response.text().await.expect("stream");
        assert_eq!(text, as_client_sees(&golden), "byte for byte but the model");

        let seen = upstream.requests();
        assert!(
            seen[0].request_line.starts_with("POST /v1/responses "),
            "{}",
            seen[0].request_line
        );
        assert_eq!(seen[0].body["model"], "upstream-model");
        assert_eq!(seen[0].body["max_output_tokens"], 64);
        assert!(
            seen[0].body.get("api_key").is_none(),
            "destination fields are never forwarded"
        );
    }
}

#[tokio::test]
async fn the_terminal_events_usage_is_what_the_key_is_charged() {
    let upstream = MockUpstream::reply(replaying("openai-responses.sse"))
        .start()
        .await;
    let config = responses_pool(&[upstream.base_url()]).tier("{tokens_per_minute: 100000}");
    let gateway = TestGateway::start(&config).await;
    let body = json!({"model": "test-model", "input": "hi", "stream": true, "store": false});
    let text = post_responses(&gateway.url(""), KEY, &body)
        .await
        .text()
        .await
        .expect("stream");
    assert!(text.ends_with("}}\n\n") && text.contains("event: response.completed"));
    let totals = usage_totals(&gateway.url(""), "full", 1).await;
    assert_eq!(
        (&totals["prompt_tokens"], &totals["completion_tokens"]),
        (&json!(21), &json!(9)),
        "input_tokens and output_tokens of response.completed: {totals}"
    );
}

#[tokio::test]
async fn a_failure_after_the_first_event_ends_with_a_responses_error_event() {
    let golden = golden("openai-responses.sse");
    let cut = golden
        .find("event: response.output_text.done")
        .expect("present");
    let upstream = MockUpstream::reply(Reply::Events {
        pieces: vec![golden[..cut].to_owned()],
        cut: true,
    })
    .start()
    .await;
    let gateway = TestGateway::start(&responses_pool(&[upstream.base_url()])).await;
    let body = json!({"model": "test-model", "input": "hi", "stream": true, "store": false});
    let response = post_responses(&gateway.url(""), KEY, &body).await;
    assert_eq!(response.status(), 200, "the failure came after the commit");
    let text = response.text().await.expect("stream");
    assert!(
        text.starts_with(&as_client_sees(&golden[..cut])),
        "every event before it"
    );
    let last = text[as_client_sees(&golden[..cut]).len()..].to_owned();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one final error event: {last:?}"));
    let error: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "upstream_disconnected");
    assert_eq!(
        error["sequence_number"], 8,
        "numbered after the 8 events sent"
    );
    assert_eq!(error["error"]["code"], "upstream_disconnected");
}

#[tokio::test]
async fn an_upstream_error_event_is_told_in_the_gateways_words() {
    let golden = golden("openai-responses-tools.sse");
    let cut = golden
        .find("event: response.output_item.done")
        .expect("present");
    let upstream_error = "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded at https://internal.example/x\",\"param\":null,\"sequence_number\":6}\n\n";
    let upstream = MockUpstream::reply(Reply::Events {
        pieces: vec![golden[..cut].to_owned(), upstream_error.to_owned()],
        cut: false,
    })
    .start()
    .await;
    let gateway = TestGateway::start(&responses_pool(&[upstream.base_url()])).await;
    let body = json!({"model": "test-model", "input": "weather?", "stream": true, "store": false});
    let text = post_responses(&gateway.url(""), KEY, &body)
        .await
        .text()
        .await
        .expect("stream");
    let names = event_names(&text);
    assert_eq!(names.last(), Some(&"error"), "{names:?}");
    assert_eq!(names.len(), 7, "six events, then the error: {names:?}");
    assert!(
        !text.contains("internal.example"),
        "upstream URLs never reach the client"
    );
}

#[tokio::test]
async fn a_whole_response_is_renamed_and_stored_ones_follow_their_backend_and_key() {
    let gateway = TestGateway::start(&two_mocks()).await;
    let base = gateway.url("");
    let first = post_responses(
        &base,
        KEY,
        &json!({"model": "test-model", "input": "remember 7"}),
    )
    .await;
    assert_eq!(first.status(), 200);
    let home = backend_of(&first);
    let made: Value = first.json().await.expect("JSON");
    assert_eq!(made["model"], "test-model");
    assert_eq!(made["status"], "completed");
    let id = made["id"].as_str().expect("an id").to_owned();

    // Each mock keeps its own responses: a follow-up anywhere else would be refused.
    let mut previous = id.clone();
    for turn in 0..6 {
        let body = json!({"model": "test-model", "input": format!("turn {turn}"), "previous_response_id": previous, "stream": turn % 2 == 0});
        let response = post_responses(&base, KEY, &body).await;
        assert_eq!(response.status(), 200, "turn {turn}");
        assert_eq!(backend_of(&response), home, "turn {turn} stays home");
        let text = response.text().await.expect("body");
        previous = text
            .split("\"id\":\"resp_")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|rest| format!("resp_{rest}"))
            .expect("the new response's id");
    }

    let read = call_stored(&base, KEY, reqwest::Method::GET, &id).await;
    assert_eq!(read.status(), 200);
    assert_eq!(backend_of(&read), home);
    let read: Value = read.json().await.expect("JSON");
    assert_eq!(read["id"], id.as_str());
    assert_eq!(
        read["model"], "test-model",
        "the alias, also when read back"
    );

    let items = call_stored(
        &base,
        KEY,
        reqwest::Method::GET,
        &format!("{id}/input_items"),
    )
    .await;
    assert_eq!(items.status(), 200);
    assert_eq!(backend_of(&items), home);
    let items: Value = items.json().await.expect("JSON");
    assert_eq!(items["object"], "list");
    assert_eq!(items["data"][0]["content"][0]["text"], "remember 7");

    // Another key is told nothing exists, whatever it tries.
    for (method, path) in [
        (reqwest::Method::GET, format!("{id}/input_items")),
        (reqwest::Method::GET, id.clone()),
        (reqwest::Method::DELETE, id.clone()),
        (reqwest::Method::POST, format!("{id}/cancel")),
    ] {
        let (status, error) = error_of(call_stored(&base, OTHER_KEY, method, &path).await).await;
        assert_eq!(status, 404, "{error}");
    }
    let (status, error) = error_of(
        post_responses(
            &base,
            OTHER_KEY,
            &json!({"model": "other-model", "input": "x", "previous_response_id": id}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("previous_response_not_found")),
        "{error}"
    );

    // Cancelling reaches the backend, which refuses a foreground response.
    let cancel = call_stored(&base, KEY, reqwest::Method::POST, &format!("{id}/cancel")).await;
    assert_eq!(cancel.status(), 400);

    let deleted = call_stored(&base, KEY, reqwest::Method::DELETE, &id).await;
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.expect("JSON");
    assert_eq!(deleted["deleted"], true);
    let (status, _) = error_of(call_stored(&base, KEY, reqwest::Method::GET, &id).await).await;
    assert_eq!(status, 404, "forgotten once deleted");
}

#[tokio::test]
async fn unstored_and_unknown_responses_are_not_found() {
    let gateway = TestGateway::start(&two_mocks()).await;
    let base = gateway.url("");
    let made: Value = post_responses(
        &base,
        KEY,
        &json!({"model": "test-model", "input": "x", "store": false}),
    )
    .await
    .json()
    .await
    .expect("JSON");
    let id = made["id"].as_str().expect("id");
    for path in [id, "resp_never_made", "..%2F..%2Fadmin", "a%20b"] {
        let (status, error) =
            error_of(call_stored(&base, KEY, reqwest::Method::GET, path).await).await;
        assert_eq!(status, 404, "{path}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, error) = error_of(
        post_responses(
            &base,
            KEY,
            &json!({"model": "test-model", "input": "x", "previous_response_id": id}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("previous_response_id"))
    );
    let put = http()
        .put(gateway.url("/v1/responses/resp_x"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("answer");
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, DELETE");
}

#[tokio::test]
async fn a_stored_request_is_not_sent_again_after_a_backend_may_have_acted_on_it() {
    let failing = MockUpstream::reply(Reply::Status {
        status: 500,
        body: r#"{"error":{"message":"boom"}}"#.into(),
        headers: vec![],
    })
    .keep_alive()
    .start()
    .await;
    let good = MockUpstream::reply(replaying("openai-responses.sse"))
        .keep_alive()
        .start()
        .await;
    // `b0` (the failing one) is all but certainly the first choice.
    let config = GatewayConfig::with_backend(format!(
        "{{name: b0, kind: openai, base_url: '{}', apis: [responses], weight: 1000}}, \
         {{name: b1, kind: openai, base_url: '{}', apis: [responses]}}",
        failing.base_url(),
        good.base_url()
    ));
    let gateway = TestGateway::start(&config).await;
    let stored = json!({"model": "test-model", "input": "x", "stream": true});
    let (status, error) = error_of(post_responses(&gateway.url(""), KEY, &stored).await).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (502, Some("upstream_failed"))
    );
    assert_eq!(good.requests().len(), 0, "a stored request goes out once");

    let unstored = json!({"model": "test-model", "input": "x", "stream": true, "store": false});
    let response = post_responses(&gateway.url(""), KEY, &unstored).await;
    assert_eq!(response.status(), 200, "retried on the other backend");
    assert_eq!(backend_of(&response), "b1");
    assert!(
        response
            .text()
            .await
            .expect("stream")
            .contains("response.completed")
    );
    assert_eq!(failing.requests().len(), 2);
}

/// A mock backend (`mock-upstream`) on a free port, serving until the test ends.
async fn mock_upstream_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let script = sluicegate::config::MockConfig {
        tokens: 3,
        pace: Duration::ZERO,
        first_token_delay: Duration::ZERO,
        dimensions: 8,
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the mock serves for the whole test"
    )]
    tokio::spawn(sluicegate::upstream::mock_server::serve(
        listener,
        script,
        std::future::pending(),
    ));
    url
}

#[tokio::test]
async fn replicas_sharing_redis_follow_a_stored_response_to_its_backend() {
    let redis = RedisServer::spawn().await;
    let (u0, u1) = (mock_upstream_server().await, mock_upstream_server().await);
    let config = responses_pool(&[u0, u1]).redis(&redis.url());
    let (a, b) = (
        TestGateway::start(&config).await,
        TestGateway::start(&config).await,
    );
    let made = post_responses(
        &a.url(""),
        KEY,
        &json!({"model": "test-model", "input": "x"}),
    )
    .await;
    let home = backend_of(&made);
    let made: Value = made.json().await.expect("JSON");
    let id = made["id"].as_str().expect("id");
    for turn in 0..4 {
        let body = json!({"model": "test-model", "input": "more", "previous_response_id": id});
        let response = post_responses(&b.url(""), KEY, &body).await;
        assert_eq!(response.status(), 200, "turn {turn} on the other replica");
        assert_eq!(backend_of(&response), home);
    }
    let read = call_stored(&b.url(""), KEY, reqwest::Method::GET, id).await;
    assert_eq!(read.status(), 200);
    assert_eq!(backend_of(&read), home);
}

#[tokio::test]
async fn two_replicas_sharing_redis_admit_exactly_the_limit_for_responses() {
    let redis = RedisServer::spawn().await;
    let upstream = MockUpstream::reply(replaying("openai-responses.sse"))
        .keep_alive()
        .start()
        .await;
    let config = responses_pool(&[upstream.base_url()])
        .tier("{requests_per_minute: 8}")
        .redis(&redis.url());
    let (a, b) = (
        TestGateway::start(&config).await,
        TestGateway::start(&config).await,
    );
    let body = json!({"model": "test-model", "input": "x", "stream": true, "store": false});
    let requests = (0..24).map(|i| {
        let base = if i % 2 == 0 { a.url("") } else { b.url("") };
        let body = &body;
        async move {
            let response = post_responses(&base, KEY, body).await;
            let status = response.status().as_u16();
            let _ = response.text().await;
            status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        8,
        "exactly 8 of 24 across two replicas: {statuses:?}"
    );
    assert_eq!(upstream.requests().len(), 8);
}

#[tokio::test]
async fn a_chat_only_backend_serves_responses_translated_both_ways() {
    let upstream = MockUpstream::stream_tokens(&["Hel", "lo", " there"])
        .keep_alive()
        .start()
        .await;
    let config = GatewayConfig::openai(&upstream.base_url());
    let gateway = TestGateway::start(&config).await;
    let body = json!({"model": "test-model", "instructions": "be brief", "input": "hi", "stream": true, "max_output_tokens": 50});
    let response = post_responses(&gateway.url(""), KEY, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    let names = event_names(&text);
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(["response.output_text.delta"; 3]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected, "the golden transcript's shape");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("JSON"))
        .collect();
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().expect("numbered"))
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let done = events.last().expect("terminal");
    assert_eq!(done["response"]["model"], "test-model");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "Hello there"
    );
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);

    let seen = upstream.requests();
    assert!(
        seen[0]
            .request_line
            .starts_with("POST /v1/chat/completions ")
    );
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(seen[0].body["max_tokens"], 50);

    let completion = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "upstream-model",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    });
    let upstream = MockUpstream::reply(Reply::Status {
        status: 200,
        body: completion.to_string(),
        headers: vec![],
    })
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let body = json!({"model": "test-model", "input": "call f", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]});
    let whole: Value = post_responses(&gateway.url(""), KEY, &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(whole["object"], "response");
    assert_eq!(whole["model"], "test-model");
    assert_eq!(
        whole["store"], false,
        "the gateway does not store translations"
    );
    assert_eq!(whole["output"][0]["type"], "function_call");
    assert_eq!(whole["output"][0]["call_id"], "call_1");
    assert_eq!(whole["usage"]["input_tokens"], 12);
    assert_eq!(
        upstream.requests()[0].body["tools"][0]["function"]["name"],
        "f",
        "function tools in chat's shape"
    );
}

#[tokio::test]
async fn what_chat_cannot_do_goes_to_a_backend_that_serves_responses_or_is_refused() {
    let chat_only = MockUpstream::stream(2).keep_alive().start().await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&chat_only.base_url())).await;
    let body = json!({"model": "test-model", "input": "news?", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]});
    let (status, error) = error_of(post_responses(&gateway.url(""), KEY, &body).await).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("tools[1].type")),
        "{error}"
    );
    assert_eq!(chat_only.requests().len(), 0, "nothing sent");

    let native = MockUpstream::reply(replaying("openai-responses.sse"))
        .keep_alive()
        .start()
        .await;
    // The chat-only backend weighs far more, yet the request only fits the other.
    let config = GatewayConfig::with_backend(format!(
        "{{name: chat, kind: openai, base_url: '{}', weight: 1000}}, \
         {{name: native, kind: openai, base_url: '{}', apis: [responses]}}",
        chat_only.base_url(),
        native.base_url()
    ));
    let gateway = TestGateway::start(&config).await;
    let mut body = body;
    body["stream"] = json!(true);
    for _ in 0..3 {
        let response = post_responses(&gateway.url(""), KEY, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(backend_of(&response), "native");
        let _ = response.text().await;
    }
    assert_eq!(chat_only.requests().len(), 0);
}

#[tokio::test]
async fn a_response_that_never_finished_cannot_be_continued_nor_a_background_one_made() {
    let golden = golden("openai-responses.sse");
    let cut = golden
        .find("event: response.output_text.done")
        .expect("present");
    let upstream = MockUpstream::reply(Reply::Events {
        pieces: vec![golden[..cut].to_owned()],
        cut: true,
    })
    .start()
    .await;
    let gateway = TestGateway::start(&responses_pool(&[upstream.base_url()])).await;
    let base = gateway.url("");
    let text = post_responses(
        &base,
        KEY,
        &json!({"model": "test-model", "input": "hi", "stream": true}),
    )
    .await
    .text()
    .await
    .expect("stream");
    assert!(text.ends_with("\n\n") && text.contains("event: error"));
    // Its size (the context a continuation carries) never arrived: nothing to reserve by.
    let id = "resp_0c1f8a3e2b7d4f6a9e5b1c2d3e4f5a6b7c8d9e0f1a2b3c4d";
    let body = json!({"model": "test-model", "input": "and?", "previous_response_id": id});
    let (status, error) = error_of(post_responses(&base, KEY, &body).await).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("previous_response_incomplete")),
        "{error}"
    );
    assert_eq!(upstream.requests().len(), 1, "the follow-up was not sent");

    let body = json!({"model": "test-model", "input": "x", "background": true});
    let (status, error) = error_of(post_responses(&base, KEY, &body).await).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("background"))
    );
}
