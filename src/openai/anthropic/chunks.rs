//! The `chat.completion.chunk` events a translated stream writes, metered as they go.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::{ChatUsage, ReportedUsage, finish_reason};
use crate::openai::chunk::MeterSlot;
use crate::openai::meter::StreamMeter;
use crate::openai::tokens::TokenCounter;
use crate::sse::relay::Step;

/// The answer's identity, fixed at `message_start` and repeated in every chunk.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) id: String,
    pub(super) created: u64,
}

/// Writes chunks, and meters them as [`ChunkRewriter`] does: every chunk with a choice
/// counts, marks when tokens were sent, and has what it generated kept for counting.
///
/// [`ChunkRewriter`]: crate::openai::chunk::ChunkRewriter
#[derive(Debug)]
pub(super) struct Writer {
    /// The client-facing model name.
    model: String,
    usage: ReportedUsage,
    /// Without an output count from the upstream (a stream cut before `message_delta`) the
    /// answer is counted, while the prompt count from `message_start` stays the upstream's.
    meter: StreamMeter,
}

impl Writer {
    /// `model` is the client-facing name; `counter` counts the answer should no output count
    /// arrive; `slot` receives the metering when this is dropped.
    pub(super) fn new(model: &str, counter: TokenCounter, slot: MeterSlot) -> Self {
        Self {
            model: model.to_owned(),
            usage: ReportedUsage::default(),
            meter: StreamMeter::new(counter, slot),
        }
    }

    /// The counts `message_start` gives: the prompt, and the output so far. Metered, but not
    /// yet a report of the whole answer.
    pub(super) fn usage_at_start(&mut self, usage: ReportedUsage) {
        self.usage = self.usage.updated(usage);
        self.meter.so_far(self.usage.chat());
    }

    /// The counts `message_delta` gives, the output's among them: the upstream's report.
    pub(super) fn usage_reported(&mut self, usage: ReportedUsage) {
        self.usage = self.usage.updated(usage);
        self.meter.reported(self.usage.chat());
    }

    /// The role chunk that opens the answer.
    pub(super) fn send_role(&mut self, out: &mut BytesMut, head: &Head) -> Step {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
            ..Delta::default()
        };
        self.send(out, head, delta, None)
    }

    /// A content delta; empty text sends nothing.
    pub(super) fn send_text(&mut self, out: &mut BytesMut, head: &Head, text: &str) -> Step {
        if text.is_empty() {
            return Step::Skip;
        }
        self.meter.count(&json_string(text));
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.send(out, head, delta, None)
    }

    /// The chunk that opens tool call `call`: its id, type and name, no arguments yet.
    pub(super) fn open_call(
        &mut self,
        out: &mut BytesMut,
        head: &Head,
        call: usize,
        id: &str,
        name: &str,
    ) -> Step {
        self.meter.count(&json_string(name));
        let opening = ToolCallDelta {
            index: call,
            id: Some(id),
            r#type: Some("function"),
            function: FunctionDelta {
                name: Some(name),
                arguments: "",
            },
        };
        self.send_call(out, head, opening)
    }

    /// An argument fragment of tool call `call`; an empty fragment sends nothing.
    pub(super) fn send_arguments(
        &mut self,
        out: &mut BytesMut,
        head: &Head,
        call: usize,
        arguments: &str,
    ) -> Step {
        if arguments.is_empty() {
            return Step::Skip;
        }
        self.meter.count(&json_string(arguments));
        let fragment = ToolCallDelta {
            index: call,
            id: None,
            r#type: None,
            function: FunctionDelta {
                name: None,
                arguments,
            },
        };
        self.send_call(out, head, fragment)
    }

    fn send_call(&mut self, out: &mut BytesMut, head: &Head, call: ToolCallDelta<'_>) -> Step {
        let delta = Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        };
        self.send(out, head, delta, None)
    }

    /// The finish chunk: an empty delta and the mapped stop reason.
    pub(super) fn send_finish(
        &mut self,
        out: &mut BytesMut,
        head: &Head,
        stop_reason: Option<&str>,
    ) -> Step {
        self.send(
            out,
            head,
            Delta::default(),
            Some(finish_reason(stop_reason)),
        )
    }

    /// Writes a chunk with one choice, and meters it.
    fn send(
        &mut self,
        out: &mut BytesMut,
        head: &Head,
        delta: Delta<'_>,
        finish_reason: Option<&'static str>,
    ) -> Step {
        let choice = Choice {
            index: 0,
            delta,
            finish_reason,
        };
        self.put(out, head, &[choice], None);
        self.meter.output(None);
        Step::Send
    }

    /// The usage chunk, in OpenAI's shape: no choices.
    pub(super) fn put_usage(&self, out: &mut BytesMut, head: &Head) {
        self.put(out, head, &[], Some(self.usage.chat().into()));
    }

    /// Appends `data: {chunk}\n\n`: the JSON is one line, as serde_json escapes every newline
    /// inside a string.
    fn put(
        &self,
        out: &mut BytesMut,
        head: &Head,
        choices: &[Choice<'_>],
        usage: Option<ChatUsage>,
    ) {
        let chunk = Chunk {
            id: &head.id,
            object: "chat.completion.chunk",
            created: head.created,
            model: &self.model,
            choices,
            usage,
        };
        out.put_slice(b"data: ");
        serde_json::to_writer(out.writer(), &chunk).expect("invariant: a chunk serialises");
        out.put_slice(b"\n\n");
    }
}

/// `text` as a JSON string, the form a [`CompletionTally`] counts.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("invariant: a string serialises")
}

// === the chunks' shape ===

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#type: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}
