//! `POST /v1/embeddings` through the gateway: routed only to backends that serve it, the model
//! named as the client named it, limits reconciled with the reported usage, retried on another
//! backend, and bad requests refused with their param named.

use serde_json::{Value, json};

use crate::support::*;

/// An OpenAI-shaped embeddings answer reporting `prompt_tokens`.
fn embedding_reply(prompt_tokens: u64) -> Reply {
    Reply::Status {
        status: 200,
        body: json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
            "model": "upstream-model",
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })
        .to_string(),
        headers: vec![],
    }
}

fn embed_body(model: &str) -> Value {
    json!({"model": model, "input": ["the quick brown fox", "jumps over the lazy dog"]})
}

async fn post_embeddings(base: &str, key: &str, body: &Value) -> reqwest::Response {
    post_json(base, "/v1/embeddings", key, body).await
}

/// `test-model` on the upstreams at `urls`, serving chat and embeddings.
fn embedding_pool(urls: &[String]) -> GatewayConfig {
    let backends: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!("{{name: b{i}, kind: openai, base_url: '{url}', upstream_model: upstream-model, apis: [chat, embeddings]}}")
        })
        .collect();
    GatewayConfig::with_backend(backends.join(", "))
}

#[tokio::test]
async fn an_embeddings_call_reaches_the_embeddings_path_and_comes_back_in_the_clients_names() {
    let upstream = MockUpstream::reply(embedding_reply(9)).start().await;
    let config = embedding_pool(&[upstream.base_url()]).tier("{requests_per_minute: 100}");
    let gateway = TestGateway::start(&config).await;
    let response = post_embeddings(&gateway.url(""), KEY, &embed_body("test-model")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-sluicegate-backend"], "b0");
    assert!(
        response
            .headers()
            .contains_key("x-ratelimit-remaining-requests")
    );
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(
        answer["model"], "test-model",
        "the alias, not the upstream's name"
    );
    assert_eq!(answer["data"][0]["embedding"], json!([0.6, 0.8]));
    assert_eq!(answer["usage"]["prompt_tokens"], 9);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].request_line.starts_with("POST /v1/embeddings "),
        "{}",
        seen[0].request_line
    );
    assert_eq!(seen[0].body["model"], "upstream-model");
    assert_eq!(seen[0].body["input"], embed_body("x")["input"]);
}

#[tokio::test]
async fn a_model_without_an_embeddings_backend_is_not_found_there_and_the_reverse() {
    // `test-model` is served for chat only (the default), by the in-process mock.
    let gateway = TestGateway::start(&GatewayConfig::mock(2, "0ms")).await;
    let (status, error) =
        error_of(post_embeddings(&gateway.url(""), KEY, &embed_body("test-model")).await).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(error["error"]["param"], "model");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/v1/embeddings")),
        "{error}"
    );

    let upstream = MockUpstream::reply(embedding_reply(1)).start().await;
    let embeddings_only = GatewayConfig::with_backend(format!(
        "{{name: e, kind: openai, base_url: '{}', apis: [embeddings]}}",
        upstream.base_url()
    ));
    let gateway = TestGateway::start(&embeddings_only).await;
    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(upstream.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn bad_embeddings_requests_name_their_param_and_reach_no_backend() {
    let upstream = MockUpstream::reply(embedding_reply(1)).start().await;
    let gateway = TestGateway::start(&embedding_pool(&[upstream.base_url()])).await;
    for (body, param) in [
        (json!({"model": "test-model"}), "input"),
        (json!({"model": "test-model", "input": []}), "input"),
        (json!({"model": "test-model", "input": [1, "a"]}), "input"),
        (
            json!({"model": "test-model", "input": "x", "dimensions": 0}),
            "dimensions",
        ),
        (
            json!({"model": "test-model", "input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"input": "x"}), "model"),
    ] {
        let (status, error) = error_of(post_embeddings(&gateway.url(""), KEY, &body).await).await;
        assert_eq!(
            (status, error["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}"
        );
    }
    let (status, _) =
        error_of(post_embeddings(&gateway.url(""), "sk-wrong", &embed_body("test-model")).await)
            .await;
    assert_eq!(status, 401);
    let (status, _) =
        error_of(post_embeddings(&gateway.url(""), OTHER_KEY, &embed_body("test-model")).await)
            .await;
    assert_eq!(status, 403, "the key's model allow-list holds here too");
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn the_input_is_reserved_then_charged_as_the_upstream_reported() {
    // The input estimate (19 + 23 bytes of text: 7 + 8 tokens) is reserved; the upstream
    // reports 4. At 600 tokens a minute the bucket refills a token per 100 ms, so what the
    // second request sees tells the charge apart from the reservation.
    let upstream = MockUpstream::reply(embedding_reply(4)).start().await;
    let config = embedding_pool(&[upstream.base_url()]).tier("{tokens_per_minute: 600}");
    let gateway = TestGateway::start(&config).await;
    let remaining = |response: &reqwest::Response| -> u64 {
        response.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a number")
    };
    let first = post_embeddings(&gateway.url(""), KEY, &embed_body("test-model")).await;
    assert_eq!(
        (first.status().as_u16(), remaining(&first)),
        (200, 585),
        "15 reserved"
    );
    drop(first.bytes().await);
    tokio::time::sleep(ms(100)).await;
    let second = post_embeddings(&gateway.url(""), KEY, &embed_body("test-model")).await;
    let left = remaining(&second);
    assert!(
        (581..=583).contains(&left),
        "600 - 4 charged - 15 reserved (+ a refilled token or two), not {left}"
    );
}

#[tokio::test]
async fn a_failing_backend_is_retried_on_another() {
    let failing = MockUpstream::reply(Reply::Status {
        status: 500,
        body: r#"{"error":{"message":"boom","type":"server_error","param":null,"code":null}}"#
            .into(),
        headers: vec![],
    })
    .start()
    .await;
    let healthy = MockUpstream::reply(embedding_reply(2)).start().await;
    let gateway =
        TestGateway::start(&embedding_pool(&[failing.base_url(), healthy.base_url()])).await;
    for _ in 0..6 {
        let response = post_embeddings(&gateway.url(""), KEY, &embed_body("test-model")).await;
        assert_eq!(
            response.status(),
            200,
            "a 500 from one backend is retried on the other"
        );
        assert_eq!(response.headers()["x-sluicegate-backend"], "b1");
    }
    assert!(!healthy.requests().is_empty());
}

/// Limits shared through Redis hold for embeddings as for chat: two replicas admit exactly the
/// requests per minute between them, and the tokens each call reserved come back as reported.
#[tokio::test]
async fn two_replicas_sharing_redis_admit_exactly_the_limit_for_embeddings() {
    let redis = RedisServer::spawn().await;
    let upstream = MockUpstream::reply(embedding_reply(4)).start().await;
    let config = embedding_pool(&[upstream.base_url()])
        .tier("{requests_per_minute: 10}")
        .redis(&redis.url());
    let (a, b) = (
        TestGateway::start(&config).await,
        TestGateway::start(&config).await,
    );
    let body = embed_body("test-model");
    let requests = (0..30).map(|i| {
        let base = if i % 2 == 0 { a.url("") } else { b.url("") };
        let body = &body;
        async move { post_embeddings(&base, KEY, body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 429)),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "exactly 10 of 30 across two replicas: {statuses:?}"
    );
    assert_eq!(
        upstream.requests().len(),
        10,
        "only the admitted reached the backend"
    );
}
