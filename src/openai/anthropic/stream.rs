//! A Messages API event stream as `chat.completion.chunk` events and `[DONE]`.
//!
//! `message_start` opens the answer (the role chunk). Each content block is announced by
//! `content_block_start` and continued by `content_block_delta`s naming its index: text blocks
//! become content deltas, `tool_use` blocks become tool calls numbered from 0 in the order they
//! opened (the start carries the id and name, `input_json_delta`s the argument fragments), and
//! everything else (thinking, signatures, citations, server tools) is not forwarded.
//! `message_delta` carries the stop reason (the finish chunk) and the output count;
//! `message_stop` ends the stream (the usage chunk when asked for, then `[DONE]`).
//!
//! Events are checked against the stream so far, so a broken upstream is an
//! `UpstreamProtocol` error instead of a malformed answer, and what is kept per stream is
//! bounded (content blocks and tool calls are counted). Metering is [`ChunkRewriter`]'s: the
//! upstream's usage (the prompt from `message_start`, the output from `message_delta`), else
//! the chunks seen and the tokens counted from them.
//!
//! [`ChunkRewriter`]: crate::openai::chunk::ChunkRewriter

use bytes::{BufMut, BytesMut};
use serde::Deserialize;

use super::chunks::{Head, Writer};
use super::{ReportedUsage, chat_id, lenient_usage, malformed, unix_now};
use crate::error::GatewayError;
use crate::openai::chunk::MeterSlot;
use crate::openai::sanitize::in_band_error;
use crate::openai::tokens::TokenCounter;
use crate::sse::Event;
use crate::sse::relay::{Rewrite, Step};

/// The most tool calls one answer may open; an upstream past it is broken.
const MAX_TOOL_CALLS: usize = 128;
/// The most content blocks one answer may open, so a broken upstream cannot grow the table.
const MAX_CONTENT_BLOCKS: usize = 1024;
/// The terminating event.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Turns a Messages API event stream into chat.completion.chunk events and `[DONE]`: the
/// per-stream [`Rewrite`] of a chat request served by an Anthropic backend.
#[derive(Debug)]
pub struct MessagesToChunks {
    include_usage: bool,
    /// Set by `message_start`; every other content event needs it.
    head: Option<Head>,
    blocks: Blocks,
    /// The finish chunk went out.
    finished: bool,
    writer: Writer,
}

impl MessagesToChunks {
    /// `model` is the client-facing name written into every chunk; `include_usage` whether the
    /// client asked for the usage chunk; `counter` counts the answer when the upstream reports
    /// no output count; `slot` receives the metering when this is dropped.
    pub fn new(model: &str, include_usage: bool, counter: TokenCounter, slot: MeterSlot) -> Self {
        Self {
            include_usage,
            head: None,
            blocks: Blocks::default(),
            finished: false,
            writer: Writer::new(model, counter, slot),
        }
    }
}

impl Rewrite for MessagesToChunks {
    type Error = GatewayError;

    /// Every check is made before anything is written, so an error appends nothing.
    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        if &event.name[..] == b"error" {
            return Err(in_band_error(&event.data));
        }
        match parse(&event.data)? {
            StreamEvent::MessageStart { message } => self.on_message_start(message, out),
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => self.on_block_start(index, content_block, out),
            StreamEvent::ContentBlockDelta { index, delta } => {
                self.on_block_delta(index, delta, out)
            }
            StreamEvent::ContentBlockStop { index } => self.on_block_stop(index, out),
            StreamEvent::MessageDelta { delta, usage } => self.on_message_delta(delta, usage, out),
            StreamEvent::MessageStop => self.on_message_stop(out),
            StreamEvent::Error => Err(in_band_error(&event.data)),
            StreamEvent::Ping | StreamEvent::Unknown => Ok(Step::Skip),
        }
    }
}

// === impl MessagesToChunks ===

impl MessagesToChunks {
    fn on_message_start(
        &mut self,
        message: MessageHead,
        out: &mut BytesMut,
    ) -> Result<Step, GatewayError> {
        if self.head.is_some() {
            return Err(malformed("a Messages stream started twice"));
        }
        let head = self.head.insert(Head {
            id: chat_id(&message.id),
            created: unix_now(),
        });
        if let Some(usage) = message.usage {
            self.writer.usage_at_start(usage);
        }
        Ok(self.writer.send_role(out, head))
    }

    fn on_block_start(
        &mut self,
        index: u64,
        block: BlockStart,
        out: &mut BytesMut,
    ) -> Result<Step, GatewayError> {
        let head = started(self.head.as_ref())?;
        match block {
            BlockStart::Text { text } => {
                self.blocks.open(index, Block::Text)?;
                Ok(self.writer.send_text(out, head, &text))
            }
            BlockStart::ToolUse { id, name } => {
                let call = self.blocks.open_call(index)?;
                Ok(self.writer.open_call(out, head, call, &id, &name))
            }
            BlockStart::Other => {
                self.blocks.open(index, Block::Skipped)?;
                Ok(Step::Skip)
            }
        }
    }

    fn on_block_delta(
        &mut self,
        index: u64,
        delta: BlockDelta,
        out: &mut BytesMut,
    ) -> Result<Step, GatewayError> {
        let head = started(self.head.as_ref())?;
        match (self.blocks.get(index)?, delta) {
            (Block::Text, BlockDelta::TextDelta { text }) => {
                Ok(self.writer.send_text(out, head, &text))
            }
            (Block::ToolUse { call }, BlockDelta::InputJsonDelta { partial_json }) => {
                if !partial_json.is_empty() {
                    self.blocks.note_arguments(call);
                }
                Ok(self.writer.send_arguments(out, head, call, &partial_json))
            }
            (Block::Skipped, _) | (_, BlockDelta::Other) => Ok(Step::Skip),
            (Block::Text, BlockDelta::InputJsonDelta { .. })
            | (Block::ToolUse { .. }, BlockDelta::TextDelta { .. }) => Err(malformed(
                "a Messages stream delta does not fit its content block",
            )),
        }
    }

    /// A tool call whose block ends without a fragment (a tool without parameters) gets `{}`,
    /// as its whole answer says, so a client that parses the arguments finds JSON.
    fn on_block_stop(&mut self, index: u64, out: &mut BytesMut) -> Result<Step, GatewayError> {
        let head = started(self.head.as_ref())?;
        match self.blocks.get(index)? {
            Block::ToolUse { call } if !self.blocks.has_arguments(call) => {
                self.blocks.note_arguments(call);
                Ok(self.writer.send_arguments(out, head, call, "{}"))
            }
            Block::Text | Block::ToolUse { .. } | Block::Skipped => Ok(Step::Skip),
        }
    }

    /// The stop reason becomes the finish chunk (once: a later `message_delta` only updates
    /// the usage); the usage it carries is the upstream's report.
    fn on_message_delta(
        &mut self,
        delta: StopDelta,
        usage: Option<ReportedUsage>,
        out: &mut BytesMut,
    ) -> Result<Step, GatewayError> {
        let head = started(self.head.as_ref())?;
        // Only an output count is a report of the answer; without one it is counted.
        match usage {
            Some(usage) if usage.output_tokens.is_some() => self.writer.usage_reported(usage),
            Some(usage) => self.writer.usage_at_start(usage),
            None => {}
        }
        match delta.stop_reason {
            Some(reason) if !self.finished => {
                self.finished = true;
                Ok(self.writer.send_finish(out, head, Some(&reason)))
            }
            _ => Ok(Step::Skip),
        }
    }

    /// The finish chunk if no stop reason came, the usage chunk when asked for, `[DONE]`.
    fn on_message_stop(&mut self, out: &mut BytesMut) -> Result<Step, GatewayError> {
        let head = started(self.head.as_ref())?;
        if !self.finished {
            self.finished = true;
            self.writer.send_finish(out, head, None);
        }
        if self.include_usage {
            self.writer.put_usage(out, head);
        }
        out.put_slice(DONE);
        Ok(Step::Finish)
    }
}

/// The answer's identity, or the error for an event that needs it before `message_start`.
fn started(head: Option<&Head>) -> Result<&Head, GatewayError> {
    head.ok_or_else(|| malformed("a Messages stream event came before message_start"))
}

// === content blocks ===

/// What a content block becomes.
#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    /// The chat tool call index it was given.
    ToolUse {
        call: usize,
    },
    /// Thinking, server tools and any type added later: not forwarded.
    Skipped,
}

/// The content blocks opened, by the upstream's index, and how many were tool calls.
#[derive(Debug, Default)]
struct Blocks {
    opened: Vec<(u64, Block)>,
    tool_calls: usize,
    /// By chat tool call index: a fragment of its arguments was sent.
    argued: Vec<bool>,
}

impl Blocks {
    fn open(&mut self, index: u64, block: Block) -> Result<(), GatewayError> {
        if self.opened.iter().any(|(opened, _)| *opened == index) {
            return Err(malformed("a Messages stream started a content block twice"));
        }
        if self.opened.len() >= MAX_CONTENT_BLOCKS {
            return Err(malformed(
                "a Messages stream opened too many content blocks",
            ));
        }
        self.opened.push((index, block));
        Ok(())
    }

    /// Opens a `tool_use` block as the next chat tool call; its chat index.
    fn open_call(&mut self, index: u64) -> Result<usize, GatewayError> {
        if self.tool_calls >= MAX_TOOL_CALLS {
            return Err(malformed("a Messages stream opened too many tool calls"));
        }
        let call = self.tool_calls;
        self.open(index, Block::ToolUse { call })?;
        self.tool_calls += 1;
        self.argued.push(false);
        Ok(call)
    }

    fn note_arguments(&mut self, call: usize) {
        if let Some(argued) = self.argued.get_mut(call) {
            *argued = true;
        }
    }

    fn has_arguments(&self, call: usize) -> bool {
        self.argued.get(call).copied().unwrap_or(true)
    }

    /// The block opened at `index`; the latest first, as deltas continue it.
    fn get(&self, index: u64) -> Result<Block, GatewayError> {
        self.opened
            .iter()
            .rev()
            .find(|(opened, _)| *opened == index)
            .map(|(_, block)| *block)
            .ok_or_else(|| malformed("a Messages stream event names a content block never started"))
    }
}

/// The event's data as a Messages stream event: `UpstreamProtocol` when it is not JSON or
/// not the shape its type promises.
fn parse(data: &[u8]) -> Result<StreamEvent, GatewayError> {
    serde_json::from_slice(data).map_err(|e| {
        if e.is_data() {
            malformed("a Messages stream event does not have the shape of its type")
        } else {
            malformed("a Messages stream event is not JSON")
        }
    })
}

// === the upstream's events ===

/// A Messages API stream event, by its `type`; types added later are skipped, as Anthropic
/// asks of clients.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: MessageHead,
    },
    ContentBlockStart {
        index: u64,
        content_block: BlockStart,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta {
        delta: StopDelta,
        #[serde(default, deserialize_with = "lenient_usage")]
        usage: Option<ReportedUsage>,
    },
    MessageStop,
    Ping,
    Error,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct MessageHead {
    id: String,
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<ReportedUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStart {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    /// thinking_delta, signature_delta, citations_delta, and types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StopDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::test_support::{golden, o200k};
    use serde_json::{Value, json};

    use super::super::finish_reason;
    use super::*;
    use crate::openai::usage::{Metering, Usage};
    use crate::sse::Decoder;

    /// What a replay of upstream bytes produced.
    #[derive(Debug)]
    struct Replay {
        out: Vec<u8>,
        finished: bool,
        error: Option<GatewayError>,
        metering: Metering,
    }

    /// Feeds `parts` to a decoder one after another, each event through a translator, checking
    /// that `Send` appends, `Skip` and errors do not; stops at `Finish` or an error.
    fn replay(parts: &[&[u8]], include_usage: bool) -> Replay {
        let slot = MeterSlot::default();
        let mut rewriter = MessagesToChunks::new("alias", include_usage, o200k(), slot.clone());
        let mut decoder = Decoder::new(1 << 20);
        let mut out = BytesMut::new();
        let (mut finished, mut error) = (false, None);
        'feed: for part in parts {
            decoder.feed(part);
            while let Some(event) = decoder.next_event().expect("the input decodes") {
                let before = out.len();
                match rewriter.on_event(event, &mut out) {
                    Ok(Step::Finish) => finished = true,
                    Ok(Step::Send) => assert!(out.len() > before, "Send appends"),
                    Ok(Step::Skip) => assert_eq!(out.len(), before, "Skip appends nothing"),
                    Err(e) => {
                        assert_eq!(out.len(), before, "an error appends nothing");
                        error = Some(e);
                    }
                }
                if finished || error.is_some() {
                    break 'feed;
                }
            }
        }
        drop(rewriter);
        let metering = *slot.lock().expect("not poisoned");
        Replay {
            out: out.to_vec(),
            finished,
            error,
            metering,
        }
    }

    fn replay_whole(bytes: &[u8], include_usage: bool) -> Replay {
        let replay = replay(&[bytes], include_usage);
        assert!(replay.finished, "the stream finished: {:?}", replay.error);
        replay
    }

    /// The payloads of translated output, each checked to be exactly `data: {one line}\n\n`;
    /// chunks parsed, `[DONE]` as a JSON string.
    fn payloads(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("UTF-8");
        let Some(body) = text.strip_suffix("\n\n") else {
            assert!(text.is_empty(), "output ends with an event: {text:?}");
            return Vec::new();
        };
        body.split("\n\n")
            .map(|event| {
                let data = event.strip_prefix("data: ").expect("a data line");
                assert!(!data.contains('\n'), "one line");
                if data == "[DONE]" {
                    return json!("[DONE]");
                }
                serde_json::from_str(data).expect("a chunk is JSON")
            })
            .collect()
    }

    /// Checks what holds for every translated stream that finished: the role chunk first,
    /// every chunk naming the answer and the client's model, one finish chunk, the usage chunk
    /// only when asked, `[DONE]` last. Returns the chunks with one choice.
    fn check_finished(out: &[u8], include_usage: bool) -> Vec<Value> {
        let mut payloads = payloads(out);
        assert_eq!(payloads.pop(), Some(json!("[DONE]")), "[DONE] last");
        assert_eq!(
            out.windows(DONE.len()).filter(|w| *w == DONE).count(),
            1,
            "no text looks like [DONE] on the wire"
        );
        if include_usage {
            let usage = payloads.pop().expect("a usage chunk");
            assert_eq!(usage["choices"], json!([]));
            assert!(usage["usage"]["total_tokens"].is_u64());
        }
        let first = &payloads[0];
        for chunk in &payloads {
            assert_eq!(chunk["id"], first["id"]);
            assert_eq!(chunk["created"], first["created"]);
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "alias");
            assert!(
                chunk.get("usage").is_none(),
                "usage only in the usage chunk"
            );
            assert_eq!(chunk["choices"].as_array().map(Vec::len), Some(1));
            assert_eq!(chunk["choices"][0]["index"], 0);
        }
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let finishes: Vec<usize> = payloads
            .iter()
            .enumerate()
            .filter(|(_, c)| !c["choices"][0]["finish_reason"].is_null())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(finishes, [payloads.len() - 1], "one finish chunk, last");
        assert_eq!(
            payloads[payloads.len() - 1]["choices"][0]["delta"],
            json!({})
        );
        payloads
    }

    fn finish_reason_of(chunks: &[Value]) -> &Value {
        &chunks[chunks.len() - 1]["choices"][0]["finish_reason"]
    }

    /// The content the chunks carry, concatenated.
    fn content(chunks: &[Value]) -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    /// The tool calls the chunks carry: (index, id, name, the arguments concatenated), each
    /// opened by a chunk with its id, type and name and empty arguments.
    fn tool_calls(chunks: &[Value]) -> Vec<(u64, String, String, String)> {
        let mut calls: Vec<(u64, String, String, String)> = Vec::new();
        for chunk in chunks {
            let Some(fragments) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
                continue;
            };
            assert_eq!(fragments.len(), 1, "one call a chunk");
            let fragment = &fragments[0];
            let index = fragment["index"].as_u64().expect("an index");
            let arguments = fragment["function"]["arguments"]
                .as_str()
                .expect("arguments");
            if let Some(id) = fragment["id"].as_str() {
                assert_eq!(
                    index,
                    calls.len() as u64,
                    "calls numbered in the order opened"
                );
                assert_eq!(fragment["type"], "function");
                assert_eq!(arguments, "", "opened without arguments");
                let name = fragment["function"]["name"].as_str().expect("a name");
                calls.push((index, id.to_owned(), name.to_owned(), String::new()));
            } else {
                assert_eq!(
                    fragment.as_object().map(|f| f.len()),
                    Some(2),
                    "index and function"
                );
                assert!(!arguments.is_empty(), "no empty fragments");
                let call = calls.get_mut(index as usize).expect("an opened call");
                call.3.push_str(arguments);
            }
        }
        calls
    }

    /// What the upstream streamed, concatenated: its text deltas and its JSON fragments.
    fn upstream_said(bytes: &[u8]) -> (String, String) {
        let mut decoder = Decoder::new(1 << 20);
        decoder.feed(bytes);
        let mut said = (String::new(), String::new());
        while let Some(event) = decoder.next_event().expect("decodes") {
            let data: Value = serde_json::from_slice(&event.data).expect("JSON");
            let delta = &data["delta"];
            if let Some(text) = delta["text"].as_str() {
                said.0.push_str(text);
            }
            if let Some(json) = delta["partial_json"].as_str() {
                said.1.push_str(json);
            }
        }
        said
    }

    /// The output with the clock blanked.
    fn normalized(out: &[u8]) -> Vec<Value> {
        let mut payloads = payloads(out);
        for payload in &mut payloads {
            if payload.is_object() {
                payload["created"] = json!(0);
            }
        }
        payloads
    }

    /// An upstream stream of these events, each `event: {type}\ndata: {json}\n\n`.
    fn stream_of(events: &[Value]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events {
            let name = event["type"].as_str().expect("a type");
            bytes.extend_from_slice(format!("event: {name}\ndata: {event}\n\n").as_bytes());
        }
        bytes
    }

    fn message_start(usage: Value) -> Value {
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "claude-up", "stop_reason": null,
            "usage": usage}})
    }

    fn block_start(index: u64, block: Value) -> Value {
        json!({"type": "content_block_start", "index": index, "content_block": block})
    }

    fn block_delta(index: u64, delta: Value) -> Value {
        json!({"type": "content_block_delta", "index": index, "delta": delta})
    }

    fn text(index: u64, text: &str) -> Value {
        block_delta(index, json!({"type": "text_delta", "text": text}))
    }

    fn message_delta(stop_reason: Option<&str>, usage: Value) -> Value {
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason,
            "stop_sequence": null}, "usage": usage})
    }

    fn message_stop() -> Value {
        json!({"type": "message_stop"})
    }

    // --- the tests ---

    #[test]
    fn a_text_stream_becomes_openais_chunk_sequence() {
        let upstream = golden("anthropic-messages.sse");
        let replay = replay_whole(&upstream, false);
        let chunks = check_finished(&replay.out, false);
        assert_eq!(chunks[0]["id"], "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL");
        let (text, _) = upstream_said(&upstream);
        assert!(text.contains("\n\ndata: [DONE]\n\n") && text.contains('☕'));
        assert_eq!(content(&chunks), text, "the text byte for byte");
        assert_eq!(chunks.len(), 1 + 4 + 1, "role, four text deltas, finish");
        assert_eq!(finish_reason_of(&chunks), "stop");
        let metering = replay.metering;
        assert!(metering.reported);
        assert_eq!(
            metering.usage,
            Some(Usage {
                prompt_tokens: 12 + 3 + 5,
                completion_tokens: 15,
                total_tokens: 35
            }),
            "cached prompt tokens are prompt tokens"
        );
        assert_eq!(
            metering.chunks, 6,
            "every chunk with a choice, as ChunkRewriter counts"
        );
        assert!(metering.first_token_at.is_some() && metering.last_token_at.is_some());
        assert_eq!(
            metering.counted_completion, None,
            "reported, so not counted"
        );
    }

    #[test]
    fn the_usage_chunk_comes_only_when_asked_for() {
        let replay = replay_whole(&golden("anthropic-messages.sse"), true);
        check_finished(&replay.out, true);
        let payloads = payloads(&replay.out);
        let usage = &payloads[payloads.len() - 2];
        assert_eq!(usage["id"], "chatcmpl-msg_01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(usage["model"], "alias");
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 20, "completion_tokens": 15, "total_tokens": 35})
        );
    }

    #[test]
    fn a_tool_use_stream_becomes_text_then_a_tool_call() {
        let upstream = golden("anthropic-tools.sse");
        let replay = replay_whole(&upstream, false);
        let chunks = check_finished(&replay.out, false);
        let (text, arguments) = upstream_said(&upstream);
        assert_eq!(content(&chunks), text);
        assert_eq!(
            tool_calls(&chunks),
            [(
                0,
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6".to_owned(),
                "get_weather".to_owned(),
                arguments.clone()
            )]
        );
        let input: Value = serde_json::from_str(&arguments).expect("the fragments make JSON");
        assert_eq!(input, json!({"city": "Paris", "unit": "celsius"}));
        assert_eq!(
            chunks.len(),
            1 + 2 + 1 + 4 + 1,
            "the empty fragment is not sent"
        );
        assert_eq!(finish_reason_of(&chunks), "tool_calls");
        assert_eq!(
            replay.metering.usage.map(|u| u.total_tokens),
            Some(472 + 89)
        );
    }

    #[test]
    fn every_split_point_gives_the_same_chunks() {
        for name in ["anthropic-messages.sse", "anthropic-tools.sse"] {
            let bytes = golden(name);
            for include_usage in [false, true] {
                let whole = normalized(&replay_whole(&bytes, include_usage).out);
                for split in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(split);
                    let replay = replay(&[a, b], include_usage);
                    assert!(replay.finished, "{name} split at {split}");
                    assert_eq!(normalized(&replay.out), whole, "{name} split at {split}");
                }
            }
        }
    }

    #[test]
    fn a_mid_stream_error_event_ends_the_stream_with_the_upstreams_error() {
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let golden = golden("anthropic-messages.sse");
        let text = String::from_utf8(golden).expect("UTF-8");
        let cut = text.find("event: content_block_delta").expect("a delta");
        for error in [
            format!("event: error\ndata: {overloaded}\n\n"),
            format!("data: {overloaded}\n\n"),
        ] {
            let upstream = format!("{}{error}", &text[..cut]);
            let replay = replay(&[upstream.as_bytes()], true);
            let error = replay.error.expect("the stream fails");
            assert!(
                matches!(&error, GatewayError::UpstreamInBand { message, request_fault: false } if message == "Overloaded"),
                "{error:?}"
            );
            let payloads = payloads(&replay.out);
            assert_eq!(payloads.len(), 1, "only the role chunk went out");
            assert!(!replay.out.ends_with(DONE), "no [DONE] after an error");
        }
        let refused = replay(&[b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long\"}}\n\n"], false);
        assert!(
            matches!(
                refused.error,
                Some(GatewayError::UpstreamInBand {
                    request_fault: true,
                    ..
                })
            ),
            "the request's fault, as the upstream said"
        );
    }

    #[test]
    fn a_broken_stream_is_a_protocol_error_never_a_panic() {
        let start = message_start(json!({"input_tokens": 3, "output_tokens": 1}));
        let text_block = block_start(0, json!({"type": "text", "text": ""}));
        let tool_block = block_start(
            1,
            json!({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        );
        let rows: Vec<(&str, Vec<u8>)> = vec![
            ("delta first", stream_of(&[text(0, "Hi")])),
            ("stop first", stream_of(&[message_stop()])),
            (
                "message_delta first",
                stream_of(&[message_delta(Some("end_turn"), json!({}))]),
            ),
            ("block first", stream_of(std::slice::from_ref(&text_block))),
            ("started twice", stream_of(&[start.clone(), start.clone()])),
            (
                "unknown index",
                stream_of(&[start.clone(), text_block.clone(), text(1, "Hi")]),
            ),
            (
                "stop of unknown block",
                stream_of(&[
                    start.clone(),
                    json!({"type": "content_block_stop", "index": 4}),
                ]),
            ),
            (
                "block twice",
                stream_of(&[start.clone(), text_block.clone(), text_block.clone()]),
            ),
            (
                "json into text",
                stream_of(&[
                    start.clone(),
                    text_block.clone(),
                    block_delta(0, json!({"type": "input_json_delta", "partial_json": "{"})),
                ]),
            ),
            (
                "text into a tool call",
                stream_of(&[start.clone(), tool_block.clone(), text(1, "Hi")]),
            ),
            (
                "not JSON",
                b"event: message_start\ndata: {\"type\":\"message_st\n\n".to_vec(),
            ),
            (
                "wrong shape",
                stream_of(&[
                    start.clone(),
                    json!({"type": "content_block_delta", "index": -1,
                    "delta": {"type": "text_delta", "text": "x"}}),
                ]),
            ),
            (
                "no id",
                stream_of(&[json!({"type": "message_start", "message": {}})]),
            ),
        ];
        for (case, upstream) in rows {
            let replay = replay(&[&upstream], false);
            assert_eq!(
                replay.error.as_ref().map(GatewayError::kind),
                Some("upstream_protocol"),
                "{case}"
            );
            assert!(!replay.finished, "{case}");
        }
    }

    #[test]
    fn an_upstream_opening_endless_tool_calls_is_refused() {
        let mut events = vec![message_start(json!({}))];
        events.extend((0..=MAX_TOOL_CALLS as u64).map(|k| {
            block_start(
                k,
                json!({"type": "tool_use", "id": format!("t{k}"), "name": "f", "input": {}}),
            )
        }));
        let replay = replay(&[&stream_of(&events)], false);
        assert_eq!(
            replay.error.as_ref().map(GatewayError::kind),
            Some("upstream_protocol")
        );
        assert_eq!(payloads(&replay.out).len(), 1 + MAX_TOOL_CALLS);
    }

    #[test]
    fn thinking_pings_and_unknown_events_are_skipped_and_a_missing_stop_reason_is_stop() {
        let upstream = stream_of(&[
            message_start(json!({"input_tokens": 5, "output_tokens": 1})),
            json!({"type": "ping"}),
            block_start(0, json!({"type": "thinking", "thinking": ""})),
            block_delta(
                0,
                json!({"type": "thinking_delta", "thinking": "Let me think."}),
            ),
            block_delta(0, json!({"type": "signature_delta", "signature": "EqQB"})),
            json!({"type": "content_block_stop", "index": 0}),
            block_start(1, json!({"type": "text", "text": "Hi"})),
            block_delta(1, json!({"type": "citations_delta", "citation": {}})),
            text(1, ""),
            text(1, " there"),
            json!({"type": "some_future_event", "index": 9}),
            message_delta(None, json!({"output_tokens": 7})),
            message_delta(None, json!({"output_tokens": 9})),
            message_stop(),
        ]);
        let replay = replay_whole(&upstream, true);
        let chunks = check_finished(&replay.out, true);
        assert_eq!(
            content(&chunks),
            "Hi there",
            "text in a block's start counts too"
        );
        assert_eq!(chunks.len(), 1 + 2 + 1);
        assert_eq!(finish_reason_of(&chunks), "stop");
        assert_eq!(
            replay
                .metering
                .usage
                .map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((5, 9)),
            "the latest output count"
        );
    }

    #[test]
    fn the_finish_chunk_is_sent_once_with_the_mapped_reason() {
        let upstream = stream_of(&[
            message_start(json!({"input_tokens": 5})),
            block_start(0, json!({"type": "text", "text": ""})),
            text(0, "Hel"),
            message_delta(Some("max_tokens"), json!({"output_tokens": 1})),
            message_delta(Some("end_turn"), json!({"output_tokens": 2})),
            message_stop(),
        ]);
        let replay = replay_whole(&upstream, false);
        let chunks = check_finished(&replay.out, false);
        assert_eq!(finish_reason_of(&chunks), "length");
        assert_eq!(replay.metering.usage.map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn a_message_delta_without_an_output_count_is_no_report() {
        let upstream = stream_of(&[
            message_start(json!({"input_tokens": 40, "output_tokens": 1})),
            block_start(0, json!({"type": "text", "text": ""})),
            text(
                0,
                "The answer to everything is forty-two, as everyone knows.",
            ),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}),
            json!({"type": "message_stop"}),
        ]);
        let metering = replay(&[&upstream], false).metering;
        assert!(!metering.reported, "an empty usage is not a report");
        assert!(
            metering.counted_completion.is_some_and(|n| n > 5),
            "the answer is counted instead: {metering:?}"
        );
    }

    #[test]
    fn a_stream_cut_before_its_output_count_is_counted_with_the_upstreams_prompt() {
        let upstream = stream_of(&[
            message_start(
                json!({"input_tokens": 40, "cache_read_input_tokens": 2, "output_tokens": 1}),
            ),
            block_start(0, json!({"type": "text", "text": ""})),
            text(
                0,
                "The answer to everything is forty-two, as everyone knows.",
            ),
        ]);
        let replay = replay(&[&upstream], false);
        assert!(
            !replay.finished && replay.error.is_none(),
            "cut, not failed"
        );
        let metering = replay.metering;
        assert!(!metering.reported);
        let counted = metering.counted_completion.expect("the answer counted");
        assert!(counted > 5, "{counted} tokens");
        assert_eq!(
            metering.usage,
            Some(Usage {
                prompt_tokens: 42,
                completion_tokens: counted,
                total_tokens: 42 + counted
            })
        );
    }

    #[test]
    fn hostile_usage_numbers_are_clamped_as_chats_are() {
        let upstream = stream_of(&[
            message_start(json!({"input_tokens": -7, "cache_creation_input_tokens": 1e300})),
            message_delta(Some("end_turn"), json!({"output_tokens": 2.5})),
            message_stop(),
        ]);
        let replay = replay_whole(&upstream, false);
        let max = crate::openai::request::MAX_OUTPUT_TOKENS;
        assert_eq!(
            replay.metering.usage,
            Some(Usage {
                prompt_tokens: max,
                completion_tokens: 3,
                total_tokens: max + 3
            })
        );
        let not_an_object = stream_of(&[
            message_start(json!("lots")),
            message_delta(Some("end_turn"), json!([1])),
            message_stop(),
        ]);
        let replay = replay_whole(&not_an_object, false);
        assert!(
            !replay.metering.reported,
            "no report read from a non-object"
        );
    }

    mod properties {
        use bytes::Bytes;
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::{cases, mostly, split_at};

        /// Bytes that are mostly pieces of Messages stream events.
        fn event_data() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..200),
                mostly(
                    vec![
                        b"{\"type\":",
                        b"\"message_start\"",
                        b"\"content_block_start\"",
                        b"\"content_block_delta\"",
                        b"\"message_delta\"",
                        b"\"message_stop\"",
                        b"\"error\"",
                        b",\"index\":",
                        b"0",
                        b"1",
                        b"-1",
                        b"1e400",
                        b",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":-1}}",
                        b",\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}",
                        b",\"content_block\":{\"type\":\"text\",\"text\":\"\xc3\xa9\"}",
                        b",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}",
                        b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}",
                        b",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1e9}",
                        b"}",
                        b"\"",
                    ],
                    12,
                ),
            ]
        }

        /// A rewriter in the middle of a stream: started, a text block and a tool call open.
        fn opened(include_usage: bool) -> MessagesToChunks {
            let mut rewriter =
                MessagesToChunks::new("alias", include_usage, o200k(), MeterSlot::default());
            let mut decoder = Decoder::new(1 << 20);
            decoder.feed(&stream_of(&[
                message_start(json!({"input_tokens": 1})),
                block_start(0, json!({"type": "text", "text": ""})),
                block_start(
                    1,
                    json!({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
                ),
            ]));
            while let Some(event) = decoder.next_event().expect("decodes") {
                rewriter
                    .on_event(event, &mut BytesMut::new())
                    .expect("a valid opening");
            }
            rewriter
        }

        /// One piece of a generated answer.
        #[derive(Debug, Clone)]
        enum Op {
            Text(Vec<String>),
            Tool(String, Vec<String>),
            Thinking(String),
            Ping,
        }

        fn op() -> impl Strategy<Value = Op> {
            let fragments = || prop::collection::vec("\\PC{0,6}", 0..4);
            prop_oneof![
                3 => fragments().prop_map(Op::Text),
                2 => ("[a-z_]{1,8}", fragments()).prop_map(|(name, args)| Op::Tool(name, args)),
                1 => "\\PC{0,6}".prop_map(Op::Thinking),
                1 => Just(Op::Ping),
            ]
        }

        /// The upstream stream of `ops`, each a content block (pings aside: their index is
        /// left unused), ended by `reason`.
        fn upstream(ops: &[Op], reason: &str) -> Vec<u8> {
            let mut events = vec![message_start(
                json!({"input_tokens": 4, "output_tokens": 1}),
            )];
            for (index, op) in (0u64..).zip(ops) {
                match op {
                    Op::Text(parts) => {
                        events.push(block_start(index, json!({"type": "text", "text": ""})));
                        events.extend(parts.iter().map(|part| text(index, part)));
                    }
                    Op::Tool(name, parts) => {
                        events.push(block_start(
                            index,
                            json!({"type": "tool_use",
                            "id": format!("toolu_{index}"), "name": name, "input": {}}),
                        ));
                        events.extend(parts.iter().map(|part| {
                            block_delta(
                                index,
                                json!({"type": "input_json_delta", "partial_json": part}),
                            )
                        }));
                    }
                    Op::Thinking(thought) => {
                        events.push(block_start(
                            index,
                            json!({"type": "thinking", "thinking": ""}),
                        ));
                        events.push(block_delta(
                            index,
                            json!({"type": "thinking_delta", "thinking": thought}),
                        ));
                    }
                    Op::Ping => {
                        events.push(json!({"type": "ping"}));
                        continue;
                    }
                }
                events.push(json!({"type": "content_block_stop", "index": index}));
            }
            events.push(message_delta(Some(reason), json!({"output_tokens": 5})));
            events.push(message_stop());
            stream_of(&events)
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_event_data_never_panics_and_an_error_appends_nothing(
                data in event_data(),
                name in prop::sample::select(vec!["", "error", "message_start", "ping"]),
                started in any::<bool>(),
                include_usage in any::<bool>(),
            ) {
                let mut rewriter = if started {
                    opened(include_usage)
                } else {
                    MessagesToChunks::new("alias", include_usage, o200k(), MeterSlot::default())
                };
                let event = Event { name: Bytes::from_static(name.as_bytes()), data: data.into() };
                let mut out = BytesMut::new();
                match rewriter.on_event(event, &mut out) {
                    Ok(Step::Send | Step::Finish) => {
                        prop_assert!(!payloads(&out).is_empty(), "well-formed chunks");
                    }
                    Ok(Step::Skip) | Err(_) => prop_assert!(out.is_empty(), "nothing appended"),
                }
            }

            #[test]
            fn any_answer_split_anywhere_comes_out_whole(
                ops in prop::collection::vec(op(), 0..8),
                reason in prop::sample::select(vec!["end_turn", "max_tokens", "tool_use", "refusal", "pause_turn"]),
                include_usage in any::<bool>(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            ) {
                let bytes = upstream(&ops, reason);
                let replay = replay(&split_at(&bytes, &cuts), include_usage);
                prop_assert!(replay.finished, "{:?}", replay.error);
                let chunks = check_finished(&replay.out, include_usage);
                let texts: String = ops.iter().filter_map(|op| match op {
                    Op::Text(parts) => Some(parts.concat()),
                    _ => None,
                }).collect();
                prop_assert_eq!(content(&chunks), texts);
                // A call without a fragment says `{}`, as its whole answer would.
                let expected: Vec<(String, String)> = ops.iter().filter_map(|op| match op {
                    Op::Tool(name, parts) if parts.concat().is_empty() => Some((name.clone(), "{}".to_owned())),
                    Op::Tool(name, parts) => Some((name.clone(), parts.concat())),
                    _ => None,
                }).collect();
                let calls: Vec<(String, String)> = tool_calls(&chunks)
                    .into_iter()
                    .map(|(_, _, name, arguments)| (name, arguments))
                    .collect();
                prop_assert_eq!(calls, expected);
                prop_assert_eq!(finish_reason_of(&chunks), finish_reason(Some(reason)));
                prop_assert_eq!(replay.metering.usage.map(|u| u.total_tokens), Some(9));
            }
        }
    }
}
