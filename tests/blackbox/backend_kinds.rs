//! One behaviour table, run against every backend kind: OpenAI-compatible over plain HTTP and
//! over TLS (a private CA), Azure OpenAI, and Anthropic (translated). Each scripted upstream
//! speaks its kind's wire format; what the client sees must be the same.

use serde_json::{Value, json};

use crate::support::tls::{Pki, acceptor};
use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    OpenAiTls,
    Azure,
    Anthropic,
}

const KINDS: [Kind; 4] = [Kind::OpenAi, Kind::OpenAiTls, Kind::Azure, Kind::Anthropic];

/// A scripted upstream of `kind` and a gateway whose `test-model` it serves, with `tier`.
struct Bench {
    upstream: MockUpstream,
    gateway: TestGateway,
    _pki: Option<Pki>,
}

impl Bench {
    async fn start(kind: Kind, builder: MockBuilder, tier: &str) -> Self {
        let pki = (kind == Kind::OpenAiTls).then(Pki::new);
        let builder = match &pki {
            Some(pki) => builder.tls(acceptor(&pki.server_cert, &pki.server_key, None)),
            None => builder,
        };
        let upstream = builder.start().await;
        let backend = match kind {
            Kind::OpenAi => format!(
                "{{name: up, kind: openai, base_url: '{}', upstream_model: upstream-model}}",
                upstream.base_url()
            ),
            Kind::OpenAiTls => format!(
                "{{name: up, kind: openai, base_url: '{}', upstream_model: upstream-model, tls: {{ca_file: '{}'}}}}",
                upstream.base_url(),
                pki.as_ref()
                    .map(|p| p.ca.display().to_string())
                    .unwrap_or_default()
            ),
            Kind::Azure => format!(
                "{{name: up, kind: azure, base_url: 'http://{}/', deployment: dep, api_version: 2024-10-21}}",
                upstream.addr
            ),
            Kind::Anthropic => format!(
                "{{name: up, kind: anthropic, base_url: '{}', upstream_model: upstream-model}}",
                upstream.base_url()
            ),
        };
        let config = GatewayConfig::with_backend(backend).tier(tier).upstream(
            "{first_byte_timeout: 5s, idle_timeout: 5s, total_timeout: 30s, max_attempts: 1}",
        );
        Self {
            gateway: TestGateway::start(&config).await,
            upstream,
            _pki: pki,
        }
    }

    fn base(&self) -> String {
        self.gateway.url("")
    }
}

/// A stream of `tokens` in `kind`'s format.
fn streaming(kind: Kind, tokens: &[&str]) -> MockBuilder {
    let shape = if kind == Kind::Anthropic {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    };
    MockUpstream::stream_tokens(tokens).shape(shape)
}

/// A whole answer saying `text` in `kind`'s format (5 prompt tokens, 3 output tokens).
fn whole(kind: Kind, text: &str) -> Reply {
    let body = if kind == Kind::Anthropic {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "upstream-model",
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 3}})
    } else {
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
    };
    Reply::Status {
        status: 200,
        body: body.to_string(),
        headers: vec![],
    }
}

/// An error answer with `status` in `kind`'s format.
fn refusal(kind: Kind, status: u16, message: &str, headers: Vec<(String, String)>) -> Reply {
    let body = if kind == Kind::Anthropic {
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}})
    } else {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
    };
    Reply::Status {
        status,
        body: body.to_string(),
        headers,
    }
}

#[tokio::test]
async fn every_kind_streams_in_the_clients_names_with_usage_only_when_asked() {
    for kind in KINDS {
        let bench = Bench::start(
            kind,
            streaming(kind, &["one", " two", " three"]).keep_alive(),
            "{}",
        )
        .await;
        let text = chat_text(&bench.base(), KEY, &chat_body(true)).await;
        assert_eq!(content_of(&text), "one two three", "{kind:?}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{kind:?}");
        let events = data_json(&text);
        assert!(
            events.iter().all(|e| e["model"] == "test-model"),
            "{kind:?}"
        );
        assert!(
            events
                .iter()
                .all(|e| e.get("usage").is_none_or(Value::is_null)),
            "{kind:?}: no usage unasked"
        );

        let mut body = chat_body(true);
        body["stream_options"] = json!({"include_usage": true});
        let text = chat_text(&bench.base(), KEY, &body).await;
        let last = data_json(&text).pop().expect("events");
        assert_eq!(last["usage"]["completion_tokens"], 3, "{kind:?}: {text}");
    }
}

#[tokio::test]
async fn every_kind_answers_whole_in_the_clients_names() {
    for kind in KINDS {
        let bench = Bench::start(kind, MockUpstream::reply(whole(kind, "all at once")), "{}").await;
        let answer: Value = post_chat(&bench.base(), KEY, &chat_body(false))
            .await
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            answer["choices"][0]["message"]["content"], "all at once",
            "{kind:?}"
        );
        assert_eq!(answer["model"], "test-model", "{kind:?}");
        assert_eq!(answer["usage"]["completion_tokens"], 3, "{kind:?}");
    }
}

#[tokio::test]
async fn every_kind_ends_a_broken_stream_with_an_error_event_and_no_done() {
    for kind in KINDS {
        let builder = streaming(kind, &["a", "b", "c", "d"]).drop_after(2);
        let bench = Bench::start(kind, builder, "{}").await;
        let text = chat_text(&bench.base(), KEY, &chat_body(true)).await;
        assert_eq!(
            content_of(&text),
            "ab",
            "{kind:?}: what came before the failure"
        );
        let last = data_json(&text).pop().expect("events");
        assert_eq!(
            last["error"]["code"], "upstream_disconnected",
            "{kind:?}: {text}"
        );
        assert!(!text.ends_with("data: [DONE]\n\n"), "{kind:?}");
    }
}

#[tokio::test]
async fn every_kind_closes_its_upstream_when_the_client_leaves() {
    for kind in KINDS {
        let tokens: Vec<String> = (0..200).map(|i| format!("t{i} ")).collect();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let builder = streaming(kind, &tokens).pace(ms(20));
        let bench = Bench::start(kind, builder, "{}").await;
        let mut response = post_chat(&bench.base(), KEY, &chat_body(true)).await;
        let _first = response.chunk().await.expect("a first chunk");
        let left = tokio::time::Instant::now();
        drop(response);
        let closed = within(
            ms(3000),
            "the upstream connection closing",
            bench.upstream.closed(0),
        )
        .await;
        assert!(closed.duration_since(left) < ms(2000), "{kind:?}");
    }
}

#[tokio::test]
async fn every_kind_maps_upstream_statuses_alike() {
    for kind in KINDS {
        let bench = Bench::start(
            kind,
            MockUpstream::reply(refusal(kind, 400, "bad temperature", vec![])),
            "{}",
        )
        .await;
        let (status, error) =
            error_of(post_chat(&bench.base(), KEY, &chat_body(false)).await).await;
        assert_eq!(status, 400, "{kind:?}");
        assert_eq!(error["error"]["message"], "bad temperature", "{kind:?}");

        bench
            .upstream
            .set_reply(refusal(kind, 500, "internal", vec![]));
        let (status, error) =
            error_of(post_chat(&bench.base(), KEY, &chat_body(false)).await).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (502, Some("upstream_failed")),
            "{kind:?}"
        );

        bench.upstream.set_reply(refusal(
            kind,
            429,
            "slow down",
            vec![("retry-after".into(), "3".into())],
        ));
        let response = post_chat(&bench.base(), KEY, &chat_body(false)).await;
        assert_eq!(response.status(), 429, "{kind:?}");
        assert_eq!(response.headers()["retry-after"], "3", "{kind:?}");
    }
}

#[tokio::test]
async fn every_kind_settles_the_limits_from_the_reported_usage() {
    for kind in KINDS {
        let builder = streaming(kind, &["x", "y", "z", "w"]).keep_alive();
        let bench = Bench::start(kind, builder, "{tokens_per_minute: 100000}").await;
        let mut body = chat_body(true);
        body["max_tokens"] = json!(500);
        let _ = chat_text(&bench.base(), KEY, &body).await;
        let totals = usage_totals(&bench.gateway.url(""), "full", 1).await;
        assert_eq!(
            (&totals["prompt_tokens"], &totals["completion_tokens"]),
            (&json!(5), &json!(4)),
            "{kind:?}: the reported usage, not the 500 reserved: {totals}"
        );
        // The reservation came back: the next request's remaining tokens show only the charge.
        let response = post_chat(&bench.base(), KEY, &body).await;
        let remaining: u64 = response.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a number");
        assert!(remaining > 100_000 - 9 - 600, "{kind:?}: {remaining}");
        let _ = response.text().await;
    }
}
