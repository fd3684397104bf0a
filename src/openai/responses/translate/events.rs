//! The Responses API's stream events, numbered and written as SSE: `event: {type}` and one line
//! of JSON data that starts with its `type` and `sequence_number`, as OpenAI writes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::{ItemJson, OutputItem, ResponseObject, Status, TextPart};

pub(super) const CREATED: &str = "response.created";
pub(super) const IN_PROGRESS: &str = "response.in_progress";
pub(super) const ITEM_ADDED: &str = "response.output_item.added";
pub(super) const PART_ADDED: &str = "response.content_part.added";
pub(super) const TEXT_DELTA: &str = "response.output_text.delta";
pub(super) const TEXT_DONE: &str = "response.output_text.done";
pub(super) const PART_DONE: &str = "response.content_part.done";
pub(super) const ARGUMENTS_DELTA: &str = "response.function_call_arguments.delta";
pub(super) const ARGUMENTS_DONE: &str = "response.function_call_arguments.done";
pub(super) const ITEM_DONE: &str = "response.output_item.done";
pub(super) const COMPLETED: &str = "response.completed";
pub(super) const INCOMPLETE: &str = "response.incomplete";

/// Writes numbered events. The number of the next one is shared with the caller, which gives
/// it to a final error event.
#[derive(Debug)]
pub(super) struct Events {
    next: u64,
    shared: Arc<AtomicU64>,
}

impl Events {
    /// Numbers events from 0.
    pub(super) fn new(shared: Arc<AtomicU64>) -> Self {
        shared.store(0, Ordering::Release);
        Self { next: 0, shared }
    }

    /// The number the next event gets.
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Makes `next` the number of the next event (to take back events that were not sent).
    pub(super) fn rewind(&mut self, next: u64) {
        self.next = next;
        self.shared.store(next, Ordering::Release);
    }

    /// An event carrying the whole response object (`kind` is one of the `response.*` events).
    pub(super) fn response(
        &mut self,
        out: &mut BytesMut,
        kind: &'static str,
        response: ResponseObject<'_>,
    ) {
        self.emit(out, kind, ResponseEvent { response });
    }

    /// The events that open an item: the item as announced, and a message's empty text part.
    pub(super) fn item_added(
        &mut self,
        out: &mut BytesMut,
        output_index: usize,
        item: OutputItem<'_>,
    ) {
        let json = item.json(Status::InProgress);
        self.emit(
            out,
            ITEM_ADDED,
            ItemEvent {
                output_index,
                item: json,
            },
        );
        if let OutputItem::Message(message) = item {
            let part = PartEvent {
                item_id: &message.id,
                output_index,
                content_index: 0,
                part: TextPart::new(""),
            };
            self.emit(out, PART_ADDED, part);
        }
    }

    pub(super) fn text_delta(
        &mut self,
        out: &mut BytesMut,
        item_id: &str,
        output_index: usize,
        delta: &str,
    ) {
        let event = TextDelta {
            item_id,
            output_index,
            content_index: 0,
            delta,
            logprobs: [],
        };
        self.emit(out, TEXT_DELTA, event);
    }

    pub(super) fn arguments_delta(
        &mut self,
        out: &mut BytesMut,
        item_id: &str,
        output_index: usize,
        delta: &str,
    ) {
        let event = ArgumentsDelta {
            item_id,
            output_index,
            delta,
        };
        self.emit(out, ARGUMENTS_DELTA, event);
    }

    /// The events that close an item: its full text or arguments, then the item.
    pub(super) fn item_done(
        &mut self,
        out: &mut BytesMut,
        output_index: usize,
        item: OutputItem<'_>,
        status: Status,
    ) {
        match item {
            OutputItem::Message(message) => {
                let text = TextDone {
                    item_id: &message.id,
                    output_index,
                    content_index: 0,
                    text: &message.text,
                    logprobs: [],
                };
                self.emit(out, TEXT_DONE, text);
                let part = PartEvent {
                    item_id: &message.id,
                    output_index,
                    content_index: 0,
                    part: TextPart::new(&message.text),
                };
                self.emit(out, PART_DONE, part);
            }
            OutputItem::Call(call) => {
                let arguments = ArgumentsDone {
                    item_id: &call.id,
                    output_index,
                    arguments: &call.arguments,
                };
                self.emit(out, ARGUMENTS_DONE, arguments);
            }
        }
        let item = item.json(status);
        self.emit(out, ITEM_DONE, ItemEvent { output_index, item });
    }

    /// Appends `event: {kind}` with `body` as data, after its `type` and `sequence_number`.
    /// The JSON is one line: serde_json escapes every newline inside a string.
    fn emit<T: Serialize>(&mut self, out: &mut BytesMut, kind: &'static str, body: T) {
        let event = Envelope {
            r#type: kind,
            sequence_number: self.next,
            body,
        };
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_slice(b"\ndata: ");
        serde_json::to_writer(out.writer(), &event).expect("invariant: an event serialises");
        out.put_slice(b"\n\n");
        self.rewind(self.next.saturating_add(1));
    }
}

#[derive(Serialize)]
struct Envelope<T> {
    r#type: &'static str,
    sequence_number: u64,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    response: ResponseObject<'a>,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    output_index: usize,
    item: ItemJson<'a>,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    part: TextPart<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    delta: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct TextDone<'a> {
    item_id: &'a str,
    output_index: usize,
    content_index: usize,
    text: &'a str,
    logprobs: [(); 0],
}

#[derive(Serialize)]
struct ArgumentsDelta<'a> {
    item_id: &'a str,
    output_index: usize,
    delta: &'a str,
}

#[derive(Serialize)]
struct ArgumentsDone<'a> {
    item_id: &'a str,
    output_index: usize,
    arguments: &'a str,
}
