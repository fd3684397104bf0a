//! The mock backend: a synthesized OpenAI answer (token count, pace, first-token delay), so the
//! gateway serves on a machine with no model server. Also served over HTTP by `mock-upstream`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

use super::mock_responses::{MockRefusal, StoredResponses};
use super::{ByteStream, Call};
use crate::config::{Api, MockConfig};

const WORDS: [&str; 8] = [
    "The ",
    "quick ",
    "brown ",
    "fox ",
    "jumps ",
    "over ",
    "the ",
    "lazy dog. ",
];

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct MockBackend {
    script: MockConfig,
    model: String,
    /// The Responses API's stored responses.
    responses: Arc<StoredResponses>,
}

/// What the mock reads from a request body.
#[derive(Debug, Clone, Copy)]
struct Ask {
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
}

impl MockBackend {
    pub fn new(script: MockConfig, model: &str) -> Self {
        Self {
            script,
            model: model.to_owned(),
            responses: Arc::default(),
        }
    }

    /// The answer to a call: embeddings as JSON; chat, legacy completions or responses as SSE
    /// bytes when the body asks to stream, else JSON; stored responses read, deleted or
    /// cancelled.
    pub fn respond(&self, call: &Call, body: &[u8]) -> Result<ByteStream, MockRefusal> {
        let api = match call {
            Call::Create(api) => *api,
            Call::Retrieve(id) => return self.responses.retrieve(id).map(once),
            Call::Delete(id) => return self.responses.delete(id).map(once),
            Call::Cancel(id) => return self.responses.cancel(id).map(once),
            Call::InputItems(id) => return self.responses.input_items(id).map(once),
        };
        Ok(match api {
            Api::Responses => return self.responses.create(&self.model, self.script, body),
            Api::Embeddings => {
                let answer =
                    super::mock_embeddings::answer(&self.model, self.script.dimensions, body);
                Box::pin(futures_util::stream::once(async move { answer }))
            }
            Api::Chat | Api::Completions => self.generate(api, body),
        })
    }

    /// A chat or legacy completion.
    fn generate(&self, api: Api, body: &[u8]) -> ByteStream {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let ask = Ask {
            stream: request["stream"].as_bool().unwrap_or(false),
            include_usage: request["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            max_tokens: request["max_completion_tokens"]
                .as_u64()
                .or(request["max_tokens"].as_u64()),
        };
        let answer = Answer {
            id: format!(
                "{}-mock-{}",
                if api == Api::Completions {
                    "cmpl"
                } else {
                    "chatcmpl"
                },
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            ),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: self.model.clone(),
            tokens: ask.max_tokens.map_or(self.script.tokens as u64, |cap| {
                cap.min(self.script.tokens as u64)
            }),
            prompt_tokens: prompt_tokens(&request),
            legacy: api == Api::Completions,
        };
        if ask.stream {
            Box::pin(stream(answer, self.script, ask.include_usage))
        } else {
            Box::pin(complete(answer, self.script))
        }
    }
}

struct Answer {
    id: String,
    created: u64,
    model: String,
    tokens: u64,
    prompt_tokens: u64,
    /// A legacy text completion (`text_completion` objects with `text`) rather than chat.
    legacy: bool,
}

impl Answer {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        if self.legacy {
            let text = delta["content"].as_str().unwrap_or_default();
            return event(&json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
            }));
        }
        event(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    /// The whole answer as one JSON object.
    fn whole(&self) -> Value {
        if self.legacy {
            return json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": self.text(), "logprobs": null, "finish_reason": "stop"}],
                "usage": self.usage(),
            });
        }
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text()}, "finish_reason": "stop"}],
            "usage": self.usage(),
        })
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        })
    }

    fn text(&self) -> String {
        (0..self.tokens).map(word).collect()
    }
}

/// The `i`th word of every mock answer.
pub(super) fn word(i: u64) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}

fn once(body: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::once(async move { Ok(body) }))
}

fn stream(
    answer: Answer,
    script: MockConfig,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::error::GatewayError>> + Send {
    async_stream::stream! {
        pause(script.first_token_delay).await;
        yield Ok(answer.chunk(json!({"role": "assistant", "content": ""}), None));
        for i in 0..answer.tokens {
            if i > 0 {
                pause(script.pace).await;
            }
            yield Ok(answer.chunk(json!({"content": word(i)}), None));
        }
        yield Ok(answer.chunk(json!({}), Some("stop")));
        if include_usage {
            let object = if answer.legacy { "text_completion" } else { "chat.completion.chunk" };
            yield Ok(event(&json!({
                "id": answer.id, "object": object, "created": answer.created,
                "model": answer.model, "choices": [], "usage": answer.usage(),
            })));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

fn complete(
    answer: Answer,
    script: MockConfig,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::error::GatewayError>> + Send {
    async_stream::stream! {
        let generation = script.pace.saturating_mul(answer.tokens.saturating_sub(1) as u32);
        pause(script.first_token_delay + generation.min(Duration::from_secs(600))).await;
        let body = answer.whole();
        yield Ok(Bytes::from(serde_json::to_vec(&body).expect("invariant: JSON value serialises")));
    }
}

/// Sleeps for `duration`; a zero pace does not sleep at all (a zero-length tokio sleep still
/// waits for the next 1 ms timer tick, which would dominate benchmark latencies).
pub(super) async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn event(value: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(b"data: ");
    out.put_slice(&serde_json::to_vec(value).expect("invariant: JSON value serialises"));
    out.put_slice(b"\n\n");
    out.freeze()
}

/// A rough prompt size: one token per four bytes of message content (or of a legacy prompt).
fn prompt_tokens(request: &Value) -> u64 {
    let bytes: usize = request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .map(|m| m["content"].to_string().len())
                .sum()
        })
        .unwrap_or_else(|| request["prompt"].to_string().len());
    (bytes as u64).div_ceil(4)
}
