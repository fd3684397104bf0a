//! The mock backend's Responses API: the synthesized answer as typed events or a whole
//! `response` object, and a bounded in-memory store of the responses it made, so they can be
//! read back, deleted and continued (`previous_response_id`) as OpenAI's can, and a request
//! continuing a response the mock never made is refused as OpenAI refuses it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Value, json};

use super::ByteStream;
use super::mock::{pause, word};
use crate::config::MockConfig;
use crate::openai::responses::ResponseId;

/// How many responses the mock keeps; the oldest go first.
const MAX_STORED: usize = 4096;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A refusal in the upstream's terms: a status and an OpenAI error body.
#[derive(Debug)]
pub struct MockRefusal {
    pub status: StatusCode,
    pub body: Bytes,
}

impl MockRefusal {
    fn new(status: StatusCode, message: &str, param: Option<&str>, code: Option<&str>) -> Self {
        let body = json!({"error": {
            "message": message, "type": "invalid_request_error", "param": param, "code": code,
        }});
        Self {
            status,
            body: to_bytes(&body),
        }
    }

    fn not_found(id: &ResponseId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            &format!("Response with id '{id}' not found."),
            None,
            None,
        )
    }
}

/// The responses the mock made, newest last.
#[derive(Debug, Default)]
pub struct StoredResponses {
    inner: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    /// Each response, and the input items it was asked.
    by_id: HashMap<String, (Value, Vec<Value>)>,
    order: VecDeque<String>,
}

impl StoredResponses {
    fn put(&self, response: &Value, input: &[Value]) {
        let Some(id) = response["id"].as_str() else {
            return;
        };
        let mut store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let kept = (response.clone(), input.to_vec());
        if store.by_id.insert(id.to_owned(), kept).is_none() {
            store.order.push_back(id.to_owned());
        }
        while store.order.len() > MAX_STORED {
            if let Some(oldest) = store.order.pop_front() {
                store.by_id.remove(&oldest);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Value> {
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        store.by_id.get(id).map(|(response, _)| response.clone())
    }

    fn remove(&self, id: &str) -> bool {
        let mut store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let removed = store.by_id.remove(id).is_some();
        if removed {
            store.order.retain(|kept| kept != id);
        }
        removed
    }

    /// `GET responses/{id}`.
    pub fn retrieve(&self, id: &ResponseId) -> Result<Bytes, MockRefusal> {
        self.get(id.as_str())
            .map(|response| to_bytes(&response))
            .ok_or_else(|| MockRefusal::not_found(id))
    }

    /// `DELETE responses/{id}`.
    pub fn delete(&self, id: &ResponseId) -> Result<Bytes, MockRefusal> {
        if !self.remove(id.as_str()) {
            return Err(MockRefusal::not_found(id));
        }
        Ok(to_bytes(
            &json!({"id": id.as_str(), "object": "response.deleted", "deleted": true}),
        ))
    }

    /// `GET responses/{id}/input_items`: the items it was asked, newest first (OpenAI's default
    /// order), in one page.
    pub fn input_items(&self, id: &ResponseId) -> Result<Bytes, MockRefusal> {
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (_, input) = store
            .by_id
            .get(id.as_str())
            .ok_or_else(|| MockRefusal::not_found(id))?;
        let data: Vec<&Value> = input.iter().rev().collect();
        Ok(to_bytes(&json!({
            "object": "list", "data": data, "has_more": false,
            "first_id": data.first().map(|item| &item["id"]),
            "last_id": data.last().map(|item| &item["id"]),
        })))
    }

    /// `POST responses/{id}/cancel`: only a background response can be cancelled, and the mock
    /// runs none, so a known id is refused as OpenAI refuses a foreground one.
    pub fn cancel(&self, id: &ResponseId) -> Result<Bytes, MockRefusal> {
        if self.get(id.as_str()).is_none() {
            return Err(MockRefusal::not_found(id));
        }
        Err(MockRefusal::new(
            StatusCode::BAD_REQUEST,
            "Only responses created with background set to true can be cancelled.",
            None,
            None,
        ))
    }

    /// The answer to a `POST responses` body from model `model`.
    pub fn create(
        self: &Arc<Self>,
        model: &str,
        script: MockConfig,
        body: &[u8],
    ) -> Result<ByteStream, MockRefusal> {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if request["background"] == true {
            return Err(MockRefusal::new(
                StatusCode::BAD_REQUEST,
                "the mock model does not run background responses",
                Some("background"),
                None,
            ));
        }
        let mut context_tokens = 0;
        if let Some(previous) = request["previous_response_id"].as_str() {
            let Some(stored) = self.get(previous) else {
                return Err(MockRefusal::new(
                    StatusCode::BAD_REQUEST,
                    &format!("Previous response with id '{previous}' not found."),
                    Some("previous_response_id"),
                    Some("previous_response_not_found"),
                ));
            };
            context_tokens = stored["usage"]["total_tokens"].as_u64().unwrap_or(0);
        }
        let tokens = request["max_output_tokens"]
            .as_u64()
            .map_or(u64::from(script.tokens), |cap| {
                cap.min(u64::from(script.tokens))
            });
        let made = Made {
            id: format!(
                "resp_mock{:016x}{:06x}",
                fastrand::u64(..),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            ),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            tokens,
            input_tokens: context_tokens + input_tokens(&request),
            store: request["store"] != false,
            input: input_items(&request["input"]),
            previous: request["previous_response_id"].clone(),
            instructions: request["instructions"].clone(),
        };
        let store = self.clone();
        if request["stream"] == true {
            Ok(Box::pin(stream(made, script, store)))
        } else {
            Ok(Box::pin(whole(made, script, store)))
        }
    }
}

/// A response the mock makes.
struct Made {
    id: String,
    created_at: u64,
    model: String,
    tokens: u64,
    input_tokens: u64,
    store: bool,
    /// The request's input as items, kept with the response.
    input: Vec<Value>,
    previous: Value,
    instructions: Value,
}

impl Made {
    fn message_id(&self) -> String {
        self.id.replacen("resp_", "msg_", 1)
    }

    fn text(&self) -> String {
        (0..self.tokens).map(word).collect()
    }

    fn message(&self, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(text) => json!([{"type": "output_text", "annotations": [], "text": text}]),
            None => json!([]),
        };
        json!({"id": self.message_id(), "type": "message", "status": status, "role": "assistant", "content": content})
    }

    fn response(&self, done: bool) -> Value {
        let (status, output, usage) = if done {
            let total = self.input_tokens + self.tokens;
            (
                "completed",
                json!([self.message("completed", Some(&self.text()))]),
                json!({
                    "input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": self.tokens, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": total,
                }),
            )
        } else {
            ("in_progress", json!([]), Value::Null)
        };
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": null, "incomplete_details": null, "instructions": self.instructions,
            "model": self.model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": self.previous, "store": self.store, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "usage": usage, "metadata": {},
        })
    }

    /// The response as it stands, kept when the request asked for it to be stored.
    fn keep(&self, store: &StoredResponses, done: bool) -> Value {
        let response = self.response(done);
        if self.store {
            store.put(&response, &self.input);
        }
        response
    }
}

fn stream(
    made: Made,
    script: MockConfig,
    store: Arc<StoredResponses>,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::error::GatewayError>> + Send {
    async_stream::stream! {
        let mut events = Events::default();
        let started = made.keep(&store, false);
        pause(script.first_token_delay).await;
        yield Ok(events.next("response.created", json!({"response": started})));
        yield Ok(events.next("response.in_progress", json!({"response": started})));
        let item = made.message_id();
        yield Ok(events.next("response.output_item.added", json!({"output_index": 0, "item": made.message("in_progress", None)})));
        let part = |text: &str| json!({"type": "output_text", "annotations": [], "text": text});
        yield Ok(events.next("response.content_part.added", json!({"item_id": item, "output_index": 0, "content_index": 0, "part": part("")})));
        for i in 0..made.tokens {
            if i > 0 {
                pause(script.pace).await;
            }
            yield Ok(events.next("response.output_text.delta", json!({"item_id": item, "output_index": 0, "content_index": 0, "delta": word(i)})));
        }
        let text = made.text();
        yield Ok(events.next("response.output_text.done", json!({"item_id": item, "output_index": 0, "content_index": 0, "text": text})));
        yield Ok(events.next("response.content_part.done", json!({"item_id": item, "output_index": 0, "content_index": 0, "part": part(&text)})));
        yield Ok(events.next("response.output_item.done", json!({"output_index": 0, "item": made.message("completed", Some(&text))})));
        let done = made.keep(&store, true);
        yield Ok(events.next("response.completed", json!({"response": done})));
    }
}

fn whole(
    made: Made,
    script: MockConfig,
    store: Arc<StoredResponses>,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::error::GatewayError>> + Send {
    async_stream::stream! {
        let generation = script.pace.saturating_mul(made.tokens.saturating_sub(1) as u32);
        pause(script.first_token_delay + generation.min(Duration::from_secs(600))).await;
        yield Ok(to_bytes(&made.keep(&store, true)));
    }
}

/// Numbers the events of one stream.
#[derive(Default)]
struct Events {
    sequence: u64,
}

impl Events {
    fn next(&mut self, kind: &str, mut data: Value) -> Bytes {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let mut out = BytesMut::with_capacity(256);
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(&to_bytes(&data));
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

/// A request's `input` as items with ids: a string is one user message.
fn input_items(input: &Value) -> Vec<Value> {
    let items = match input {
        Value::String(text) => vec![json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]})],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if item.get("id").is_none() && item.is_object() {
                item["id"] = json!(format!(
                    "msg_in{:08x}{i:04x}",
                    NEXT_ID.fetch_add(1, Ordering::Relaxed)
                ));
            }
            item
        })
        .collect()
}

/// A rough input size: one token per four bytes of instructions and input.
fn input_tokens(request: &Value) -> u64 {
    let bytes = request["input"].to_string().len() + request["instructions"].to_string().len();
    (bytes as u64).div_ceil(4)
}

fn to_bytes(value: &Value) -> Bytes {
    serde_json::to_vec(value)
        .expect("invariant: JSON value serialises")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn script() -> MockConfig {
        MockConfig {
            tokens: 3,
            pace: Duration::ZERO,
            first_token_delay: Duration::ZERO,
            dimensions: 8,
        }
    }

    async fn body(stream: ByteStream) -> String {
        let chunks: Vec<Bytes> = stream.map(|c| c.expect("no error")).collect().await;
        String::from_utf8(chunks.concat()).expect("UTF-8")
    }

    #[tokio::test]
    async fn a_stored_response_can_be_read_continued_and_deleted() {
        let store = Arc::new(StoredResponses::default());
        let made = store
            .create("m", script(), br#"{"input":"hi","stream":true}"#)
            .expect("made");
        let events = body(made).await;
        let names: Vec<&str> = events
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names.first(), Some(&"response.created"));
        assert_eq!(names.last(), Some(&"response.completed"));
        assert_eq!(names.iter().filter(|n| n.ends_with(".delta")).count(), 3);
        let id = events
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("an id");
        let id = ResponseId::parse(id).expect("valid");
        let stored: Value =
            serde_json::from_slice(&store.retrieve(&id).expect("stored")).expect("JSON");
        assert_eq!(stored["status"], "completed");

        let follow_up = format!(r#"{{"input":"more","previous_response_id":"{id}"}}"#);
        let answer: Value = serde_json::from_str(
            &body(
                store
                    .create("m", script(), follow_up.as_bytes())
                    .expect("continued"),
            )
            .await,
        )
        .expect("JSON");
        assert!(
            answer["usage"]["input_tokens"].as_u64() > stored["usage"]["total_tokens"].as_u64(),
            "the context is carried"
        );

        let items: Value =
            serde_json::from_slice(&store.input_items(&id).expect("kept")).expect("JSON");
        assert_eq!(items["data"][0]["content"][0]["text"], "hi");
        assert_eq!(items["data"][0]["role"], "user");

        assert!(store.delete(&id).is_ok());
        assert_eq!(
            store.retrieve(&id).expect_err("gone").status,
            StatusCode::NOT_FOUND
        );
        let refusal = match store.create("m", script(), follow_up.as_bytes()) {
            Err(refusal) => refusal,
            Ok(_) => panic!("continuing a deleted response is refused"),
        };
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_store_keeps_the_newest_responses() {
        let store = StoredResponses::default();
        for i in 0..MAX_STORED + 10 {
            store.put(&json!({"id": format!("resp_{i}")}), &[]);
        }
        assert!(store.get("resp_0").is_none(), "the oldest went first");
        assert!(store.get(&format!("resp_{}", MAX_STORED + 9)).is_some());
    }
}
