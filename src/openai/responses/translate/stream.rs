//! A `chat.completion.chunk` stream as the Responses API's typed events.
//!
//! The first chunk opens the response (`response.created`, `response.in_progress`). Each delta
//! becomes the event that carries it (`response.output_text.delta`,
//! `response.function_call_arguments.delta`), after the events that open its output item: the
//! assistant message, or one `function_call` item per chat tool call index, numbered in the
//! order they opened. At `[DONE]` the items close and the terminal event
//! (`response.completed`, or `response.incomplete` when the finish reason cut the answer short)
//! carries the whole output and the usage. Items close at `[DONE]` rather than at the finish
//! reason because some servers (LiteLLM) send content after it; with OpenAI's stream the order
//! of events is the same either way, as only the usage chunk comes in between.
//!
//! The full text and arguments are kept for the `.done` events and the terminal event; that
//! memory is inherent to the API. Metering is [`ChunkRewriter`]'s: the upstream's usage report,
//! else the chunks seen and the tokens counted from them.
//!
//! [`ChunkRewriter`]: crate::openai::chunk::ChunkRewriter

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;

use super::events::{COMPLETED, CREATED, Events, IN_PROGRESS, INCOMPLETE};
use super::{
    ChatToolCall, Echo, Ending, FunctionCall, ItemJson, Message, OutputItem, ResponseObject,
    ResponseUsage, finished_output, malformed, new_id, reported_usage, unix_now,
};
use crate::error::GatewayError;
use crate::openai::chunk::MeterSlot;
use crate::openai::meter::StreamMeter;
use crate::openai::sanitize::in_band_error;
use crate::openai::tokens::TokenCounter;
use crate::openai::view::ObjectView;
use crate::sse::Event;
use crate::sse::relay::{Rewrite, Step};

/// The highest chat tool call `index` believed; an upstream numbering calls past it is broken.
const MAX_TOOL_CALL_INDEX: u64 = 128;
/// The most function calls one answer may open (an upstream that reuses an index for a new
/// call opens one per id, so this bounds those too).
const MAX_FUNCTION_CALLS: usize = MAX_TOOL_CALL_INDEX as usize + 1;

/// Turns a chat.completion.chunk stream into Responses typed events: the per-stream
/// [`Rewrite`] of a `/v1/responses` request served by a chat completions backend.
#[derive(Debug)]
pub struct ChatToResponses {
    head: Head,
    events: Events,
    items: Items,
    started: bool,
    /// From the latest finish reason.
    ending: Option<Ending>,
    usage: Option<ResponseUsage>,
    meter: StreamMeter,
}

impl ChatToResponses {
    /// `model` is the client-facing name written into the response; `echo` the request fields
    /// it repeats. `sequence` always holds the number of the next event, so the caller can
    /// number a final error event; `slot` receives the metering when this is dropped, and
    /// `counter` counts the answer when the upstream reports no usage.
    pub fn new(
        model: &str,
        echo: Arc<Echo>,
        sequence: Arc<AtomicU64>,
        slot: MeterSlot,
        counter: TokenCounter,
    ) -> Self {
        Self {
            head: Head {
                id: new_id("resp"),
                created_at: unix_now(),
                model: model.to_owned(),
                echo,
            },
            events: Events::new(sequence),
            items: Items::default(),
            started: false,
            ending: None,
            usage: None,
            meter: StreamMeter::new(counter, slot),
        }
    }
}

impl Rewrite for ChatToResponses {
    type Error = GatewayError;

    /// On an error nothing is appended: what the event had written is taken back, and the
    /// sequence number left for the caller is that of the first event not sent.
    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        let written = out.len();
        let numbered = self.events.next();
        let step = self.translate(&event, out);
        if step.is_err() {
            out.truncate(written);
            self.events.rewind(numbered);
        }
        step
    }
}

// === impl ChatToResponses ===

impl ChatToResponses {
    fn translate(&mut self, event: &Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        if event.data.trim_ascii() == b"[DONE]" {
            self.finish(out);
            return Ok(Step::Finish);
        }
        if &event.name[..] == b"error" {
            return Err(in_band_error(&event.data));
        }
        let view = ObjectView::parse(&event.data)
            .map_err(|_| malformed("a stream event is not a JSON object"))?;
        if let Some(error) = view.error() {
            return Err(in_band_error(error.as_bytes()));
        }
        let choices = parse_choices(view.choices())?;
        self.meter(&view, &event.data);
        let written = out.len();
        self.start(out);
        // Only the first choice: the backend is asked for one.
        for choice in choices.iter().filter(|c| c.index.unwrap_or(0) == 0) {
            self.on_choice(choice, out)?;
        }
        Ok(if out.len() > written {
            Step::Send
        } else {
            Step::Skip
        })
    }

    /// Meters the chunk as every chat chunk is; its usage, in the Responses API's names, is
    /// kept for the response object.
    fn meter(&mut self, view: &ObjectView<'_>, data: &[u8]) {
        if self.meter.chat_chunk(view).has_usage {
            self.usage = usage_of(data);
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        for kind in [CREATED, IN_PROGRESS] {
            let response = self.head.object(None, Vec::new(), None);
            self.events.response(out, kind, response);
        }
    }

    fn on_choice(&mut self, choice: &Choice, out: &mut BytesMut) -> Result<(), GatewayError> {
        if let Some(delta) = &choice.delta {
            if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.on_text(text, out);
            }
            for fragment in delta.tool_calls.iter().flatten() {
                self.on_call(fragment, out)?;
            }
        }
        if let Some(reason) = &choice.finish_reason {
            self.ending = Some(Ending::from_finish_reason(Some(reason)));
        }
        Ok(())
    }

    fn on_text(&mut self, text: &str, out: &mut BytesMut) {
        let mut open = match self.items.message.take() {
            Some(open) => open,
            None => self.open_message(out),
        };
        open.message.text.push_str(text);
        self.events
            .text_delta(out, &open.message.id, open.output_index, text);
        self.items.message = Some(open);
    }

    fn open_message(&mut self, out: &mut BytesMut) -> OpenMessage {
        let output_index = self.items.order.len();
        self.items.order.push(Slot::Message);
        let message = Message {
            id: new_id("msg"),
            text: String::new(),
        };
        self.events
            .item_added(out, output_index, OutputItem::Message(&message));
        OpenMessage {
            output_index,
            message,
        }
    }

    fn on_call(&mut self, fragment: &ChatToolCall, out: &mut BytesMut) -> Result<(), GatewayError> {
        let position = match self.items.continued_by(fragment) {
            Some(position) => position,
            None => self.open_call(fragment, out)?,
        };
        let open = &mut self.items.calls[position];
        if open.call.name.is_empty()
            && let Some(name) = fragment.name()
        {
            open.call.name = name.to_owned();
        }
        if let Some(arguments) = fragment.arguments().filter(|a| !a.is_empty()) {
            open.call.arguments.push_str(arguments);
            self.events
                .arguments_delta(out, &open.call.id, open.output_index, arguments);
        }
        Ok(())
    }

    /// Opens the `function_call` item of a fragment that continues no call; its position.
    fn open_call(
        &mut self,
        fragment: &ChatToolCall,
        out: &mut BytesMut,
    ) -> Result<usize, GatewayError> {
        if self.items.calls.len() >= MAX_FUNCTION_CALLS {
            return Err(malformed("a stream opened too many tool calls"));
        }
        let output_index = self.items.order.len();
        let call = FunctionCall {
            id: new_id("fc"),
            call_id: fragment.id().map_or_else(|| new_id("call"), str::to_owned),
            name: fragment.name().unwrap_or_default().to_owned(),
            arguments: String::new(),
        };
        self.events
            .item_added(out, output_index, OutputItem::Call(&call));
        let position = self.items.calls.len();
        self.items.order.push(Slot::Call(position));
        self.items.calls.push(OpenCall {
            output_index,
            chat_index: fragment.index,
            id_from_upstream: fragment.id().is_some(),
            call,
        });
        Ok(position)
    }

    /// Closes every item, in output order, then writes the terminal event.
    fn finish(&mut self, out: &mut BytesMut) {
        self.start(out);
        let ending = self.ending.unwrap_or(Ending::Completed);
        let items: Vec<OutputItem<'_>> = self.items.list().collect();
        let last = items.len().saturating_sub(1);
        for (output_index, item) in items.iter().enumerate() {
            let status = ending.item_status(output_index == last);
            self.events.item_done(out, output_index, *item, status);
        }
        let kind = match ending {
            Ending::Completed => COMPLETED,
            Ending::Incomplete(_) => INCOMPLETE,
        };
        let output = finished_output(items, ending);
        let response = self.head.object(Some(ending), output, self.usage.as_ref());
        self.events.response(out, kind, response);
    }
}

/// The chunk's `choices`, with every tool call index checked before anything is written.
fn parse_choices(raw: Option<&str>) -> Result<Vec<Choice>, GatewayError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let choices: Vec<Choice> = serde_json::from_str(raw)
        .map_err(|_| malformed("a stream chunk's choices are not chat choices"))?;
    let mut fragments = choices
        .iter()
        .filter_map(|choice| choice.delta.as_ref()?.tool_calls.as_ref())
        .flatten();
    if fragments.any(|f| f.index.is_some_and(|index| index > MAX_TOOL_CALL_INDEX)) {
        return Err(malformed("a tool call index is out of range"));
    }
    Ok(choices)
}

/// The chunk's usage in Responses names (read only from the chunk that reports it).
fn usage_of(data: &[u8]) -> Option<ResponseUsage> {
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Value,
    }
    let chunk: WithUsage = serde_json::from_slice(data).ok()?;
    reported_usage(&chunk.usage).map(|(_, mapped)| mapped)
}

/// A chat choice of one chunk; everything else it carries is not translated.
#[derive(Debug, Deserialize)]
struct Choice {
    index: Option<u64>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ChatToolCall>>,
}

/// The response's identity, fixed when the stream starts and repeated in every response
/// object of it.
#[derive(Debug)]
struct Head {
    id: String,
    created_at: u64,
    model: String,
    echo: Arc<Echo>,
}

impl Head {
    fn object<'a>(
        &'a self,
        ending: Option<Ending>,
        output: Vec<ItemJson<'a>>,
        usage: Option<&'a ResponseUsage>,
    ) -> ResponseObject<'a> {
        ResponseObject {
            id: &self.id,
            created_at: self.created_at,
            model: &self.model,
            echo: &self.echo,
            ending,
            output,
            usage,
        }
    }
}

// === output items ===

/// The output items opened so far. An item's place in `order` is its `output_index`.
#[derive(Debug, Default)]
struct Items {
    order: Vec<Slot>,
    message: Option<OpenMessage>,
    calls: Vec<OpenCall>,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Message,
    Call(usize),
}

#[derive(Debug)]
struct OpenMessage {
    output_index: usize,
    message: Message,
}

#[derive(Debug)]
struct OpenCall {
    output_index: usize,
    /// The chat tool call `index` it was opened for (`None`: the upstream sends none).
    chat_index: Option<u64>,
    /// Its `call_id` is the upstream's, not one the gateway made up.
    id_from_upstream: bool,
    call: FunctionCall,
}

impl Items {
    fn list(&self) -> impl Iterator<Item = OutputItem<'_>> {
        self.order.iter().filter_map(|slot| match *slot {
            Slot::Message => self
                .message
                .as_ref()
                .map(|m| OutputItem::Message(&m.message)),
            Slot::Call(position) => self.calls.get(position).map(|c| OutputItem::Call(&c.call)),
        })
    }

    /// The position of the call a fragment continues: the latest one of its index (the
    /// latest of all when the upstream sends no index, as Ollama and Gemini do), unless the
    /// fragment names another call (an upstream reusing an index), which then opens.
    fn continued_by(&self, fragment: &ChatToolCall) -> Option<usize> {
        let position = match fragment.index {
            Some(index) => self
                .calls
                .iter()
                .rposition(|c| c.chat_index == Some(index))?,
            None => self.calls.len().checked_sub(1)?,
        };
        let open = self.calls.get(position)?;
        let another =
            open.id_from_upstream && fragment.id().is_some_and(|id| id != open.call.call_id);
        (!another).then_some(position)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{golden, o200k};
    use std::fmt;
    use std::sync::atomic::Ordering;

    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, json};

    use super::super::events::*;
    use super::*;
    use crate::openai::usage::Metering;
    use crate::sse::Decoder;

    fn echo() -> Arc<Echo> {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "model": "alias", "input": "Weather in Paris?", "instructions": "Answer briefly.",
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        }))
        .expect("an object");
        Arc::new(Echo::new(&fields, 64))
    }

    /// What a replay of upstream bytes produced.
    #[derive(Debug)]
    struct Replay {
        out: Vec<u8>,
        finished: bool,
        error: Option<GatewayError>,
        /// The caller's copy of the next sequence number.
        sequence: u64,
        metering: Metering,
    }

    /// Feeds `parts` to a decoder one after another, each event through a translator, checking
    /// that `Send` appends, `Skip` and errors do not, and that the shared sequence number keeps
    /// up with what was written.
    fn replay(parts: &[&[u8]]) -> Replay {
        let slot = MeterSlot::default();
        let sequence = Arc::new(AtomicU64::new(7));
        let mut rewriter =
            ChatToResponses::new("alias", echo(), sequence.clone(), slot.clone(), o200k());
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
                let written = events(&out).len() as u64;
                assert_eq!(
                    sequence.load(Ordering::Acquire),
                    written,
                    "the next number is shared"
                );
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
            sequence: sequence.load(Ordering::Acquire),
            metering,
        }
    }

    fn replay_whole(bytes: &[u8]) -> Replay {
        let replay = replay(&[bytes]);
        assert!(replay.finished, "the stream finished: {:?}", replay.error);
        replay
    }

    /// The events of translated output, each checked to be exactly `event: {type}\ndata:
    /// {one line of JSON}\n\n` with the data's `type` the event's name.
    fn events(out: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(out).expect("UTF-8");
        let Some(body) = text.strip_suffix("\n\n") else {
            assert!(text.is_empty(), "output ends with an event: {text:?}");
            return Vec::new();
        };
        body.split("\n\n")
            .map(|event| {
                let (name, data) = event
                    .split_once('\n')
                    .expect("an event line and a data line");
                let name = name.strip_prefix("event: ").expect("an event line");
                let data = data.strip_prefix("data: ").expect("a data line");
                assert!(!data.contains('\n'), "one data line");
                let value: Value = serde_json::from_str(data).expect("data is JSON");
                assert_eq!(value["type"], name, "the data's type is the event's name");
                (name.to_owned(), data.to_owned())
            })
            .collect()
    }

    fn golden_events(name: &str) -> Vec<(String, String)> {
        let mut decoder = Decoder::new(1 << 20);
        decoder.feed(&golden(name));
        std::iter::from_fn(|| decoder.next_event().expect("golden decodes"))
            .map(|e| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
                (text(&e.name), text(&e.data))
            })
            .collect()
    }

    /// An output item as the events told it.
    #[derive(Debug)]
    struct Seen {
        id: String,
        kind: String,
        /// Its deltas, concatenated.
        streamed: String,
    }

    #[derive(Debug, Default)]
    struct Summary {
        items: Vec<Seen>,
        terminal: Option<(String, Value)>,
    }

    /// Checks what holds for every translated stream: numbers contiguous from 0, the response
    /// opened first and ended last, items opened in output order, every event naming its
    /// item's id and index, every `.done` and the terminal output repeating exactly what the
    /// deltas said.
    fn check_stream(events: &[(String, String)]) -> Summary {
        let mut summary = Summary::default();
        for (i, (name, data)) in events.iter().enumerate() {
            let event: Value = serde_json::from_str(data).expect("JSON");
            assert_eq!(event["sequence_number"], i as u64, "contiguous from 0");
            assert!(
                summary.terminal.is_none(),
                "nothing after the terminal event"
            );
            let opening = [CREATED, IN_PROGRESS];
            assert_eq!(i < 2, opening.contains(&name.as_str()), "{name} at {i}");
            if opening.contains(&name.as_str()) {
                assert_eq!(event["response"]["status"], "in_progress");
                assert_eq!(event["response"]["output"], json!([]));
                continue;
            }
            if [COMPLETED, INCOMPLETE].contains(&name.as_str()) {
                check_output(&event["response"], &summary.items);
                summary.terminal = Some((name.clone(), event["response"].clone()));
                continue;
            }
            let index = event["output_index"].as_u64().expect("an output index") as usize;
            if name == ITEM_ADDED {
                assert_eq!(index, summary.items.len(), "items open in output order");
                let item = &event["item"];
                assert_eq!(item["status"], "in_progress");
                summary.items.push(Seen {
                    id: item["id"].as_str().expect("an id").to_owned(),
                    kind: item["type"].as_str().expect("a type").to_owned(),
                    streamed: String::new(),
                });
                continue;
            }
            let seen = summary.items.get_mut(index).expect("an opened item");
            check_item_event(name, &event, seen);
        }
        summary
    }

    fn check_item_event(name: &str, event: &Value, seen: &mut Seen) {
        if name == ITEM_DONE {
            let item = &event["item"];
            assert_eq!(item["id"], seen.id.as_str());
            assert!(item["status"] == "completed" || item["status"] == "incomplete");
            assert_eq!(
                full_text(item),
                seen.streamed,
                "the item repeats its deltas"
            );
            return;
        }
        assert_eq!(event["item_id"], seen.id.as_str(), "{name} names its item");
        let expected_kind = if name.contains("function_call") {
            "function_call"
        } else {
            "message"
        };
        assert_eq!(seen.kind, expected_kind, "{name} on a {}", seen.kind);
        if seen.kind == "message" {
            assert_eq!(event["content_index"], 0);
        }
        match name {
            TEXT_DELTA | ARGUMENTS_DELTA => {
                let delta = event["delta"].as_str().expect("a delta");
                assert!(!delta.is_empty(), "no empty deltas");
                seen.streamed.push_str(delta);
            }
            PART_ADDED => assert_eq!(event["part"]["text"], ""),
            TEXT_DONE => assert_eq!(event["text"], seen.streamed.as_str()),
            PART_DONE => assert_eq!(event["part"]["text"], seen.streamed.as_str()),
            ARGUMENTS_DONE => assert_eq!(event["arguments"], seen.streamed.as_str()),
            other => panic!("unexpected event {other}"),
        }
    }

    fn check_output(response: &Value, items: &[Seen]) {
        let output = response["output"].as_array().expect("an output list");
        assert_eq!(output.len(), items.len(), "every item in the output");
        for (item, seen) in output.iter().zip(items) {
            assert_eq!(item["id"], seen.id.as_str());
            assert_eq!(full_text(item), seen.streamed);
        }
    }

    /// A message item's text, or a function call's arguments.
    fn full_text(item: &Value) -> String {
        let text = match item["type"].as_str() {
            Some("message") => &item["content"][0]["text"],
            _ => &item["arguments"],
        };
        text.as_str()
            .expect("a finished item has its text")
            .to_owned()
    }

    /// What the chat stream said, concatenated: its content, or its first call's arguments.
    fn chat_text(bytes: &[u8]) -> String {
        let mut decoder = Decoder::new(1 << 20);
        decoder.feed(bytes);
        std::iter::from_fn(|| decoder.next_event().expect("decodes"))
            .filter_map(|e| serde_json::from_slice::<Value>(&e.data).ok())
            .filter_map(|chunk| {
                let delta = &chunk["choices"][0]["delta"];
                let text = delta["content"]
                    .as_str()
                    .or(delta["tool_calls"][0]["function"]["arguments"].as_str());
                text.map(str::to_owned)
            })
            .collect()
    }

    // --- the keys of events, in order ---

    /// A JSON value's shape: its objects' keys in document order.
    enum Tree {
        Object(Vec<(String, Tree)>),
        Array(Vec<Tree>),
        Leaf,
    }

    impl<'de> Deserialize<'de> for Tree {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(TreeVisitor)
        }
    }

    struct TreeVisitor;

    impl<'de> Visitor<'de> for TreeVisitor {
        type Value = Tree;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }

        fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_unit<E>(self) -> Result<Tree, E> {
            Ok(Tree::Leaf)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Tree::Array(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(Tree::Object(entries))
        }
    }

    /// The objects whose keys make an event's shape; the request fields a response echoes are
    /// the client's, so their insides are not compared.
    const DESCEND: [&str; 9] = [
        "response",
        "item",
        "part",
        "output",
        "content",
        "usage",
        "input_tokens_details",
        "output_tokens_details",
        "incomplete_details",
    ];

    fn key_paths(tree: &Tree, prefix: &str, paths: &mut Vec<String>) {
        match tree {
            Tree::Object(entries) => {
                for (key, value) in entries {
                    let path = format!("{prefix}.{key}");
                    paths.push(path.clone());
                    if DESCEND.contains(&key.as_str()) {
                        key_paths(value, &path, paths);
                    }
                }
            }
            Tree::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    key_paths(item, &format!("{prefix}[{i}]"), paths);
                }
            }
            Tree::Leaf => {}
        }
    }

    /// Each event's name and key paths in order, a run of one kind of delta taken as one.
    fn shape(events: &[(String, String)]) -> Vec<(String, Vec<String>)> {
        let mut shape: Vec<(String, Vec<String>)> = Vec::new();
        for (name, data) in events {
            if name.ends_with(".delta") && shape.last().is_some_and(|(last, _)| last == name) {
                continue;
            }
            let tree: Tree = serde_json::from_str(data).expect("JSON");
            let mut paths = Vec::new();
            key_paths(&tree, "", &mut paths);
            shape.push((name.clone(), paths));
        }
        shape
    }

    /// The output with what differs between runs (ids, the clock) blanked.
    fn normalized(out: &[u8]) -> Vec<Value> {
        fn scrub(value: &mut Value) {
            match value {
                Value::Object(fields) => {
                    for (key, value) in fields.iter_mut() {
                        match key.as_str() {
                            "id" | "item_id" => *value = json!("<id>"),
                            "created_at" => *value = json!(0),
                            _ => scrub(value),
                        }
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(scrub),
                _ => {}
            }
        }
        events(out)
            .iter()
            .map(|(_, data)| {
                let mut value = serde_json::from_str(data).expect("JSON");
                scrub(&mut value);
                value
            })
            .collect()
    }

    /// An upstream stream of these chunks, then `[DONE]`.
    fn chat_stream(chunks: &[Value]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for chunk in chunks {
            bytes.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
        }
        bytes.extend_from_slice(b"data: [DONE]\n\n");
        bytes
    }

    fn delta(delta: Value, finish_reason: Option<&str>) -> Value {
        json!({"id": "c", "object": "chat.completion.chunk", "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }

    fn usage_chunk(prompt: u64, completion: u64) -> Value {
        json!({"id": "c", "choices": [], "usage": {"prompt_tokens": prompt,
            "completion_tokens": completion, "total_tokens": prompt + completion}})
    }

    fn call(index: Option<u64>, id: Option<&str>, name: Option<&str>, arguments: &str) -> Value {
        let mut call = json!({"function": {"arguments": arguments}});
        if let Some(index) = index {
            call["index"] = json!(index);
        }
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        call
    }

    // --- the tests ---

    #[test]
    fn a_chat_text_stream_becomes_openais_text_event_stream() {
        let upstream = golden("openai-chat.sse");
        let replay = replay_whole(&upstream);
        let events = events(&replay.out);
        assert_eq!(
            shape(&events),
            shape(&golden_events("openai-responses.sse")),
            "the golden's events, in order, with its keys in order"
        );
        let summary = check_stream(&events);
        assert_eq!(summary.items.len(), 1);
        assert_eq!(
            summary.items[0].streamed,
            chat_text(&upstream),
            "the text byte for byte, SSE-looking bytes and all"
        );
        let (name, response) = summary.terminal.expect("a terminal event");
        assert_eq!(
            (name.as_str(), &response["status"]),
            (COMPLETED, &json!("completed"))
        );
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 12})
        );
        assert_eq!(response["model"], "alias");
        assert_eq!(response["instructions"], "Answer briefly.");
        assert_eq!(replay.sequence, events.len() as u64);
        let metering = replay.metering;
        assert!(metering.reported);
        assert_eq!(metering.usage.map(|u| u.total_tokens), Some(12));
        assert_eq!(
            metering.chunks, 4,
            "the chunks with choices, as ChunkRewriter counts"
        );
        assert!(metering.first_token_at.is_some() && metering.last_token_at.is_some());
    }

    #[test]
    fn a_chat_tool_call_stream_becomes_openais_function_call_event_stream() {
        let upstream = golden("openai-chat-tools.sse");
        let replay = replay_whole(&upstream);
        let events = events(&replay.out);
        assert_eq!(
            shape(&events),
            shape(&golden_events("openai-responses-tools.sse"))
        );
        let summary = check_stream(&events);
        assert_eq!(summary.items[0].streamed, chat_text(&upstream));
        assert_eq!(summary.items[0].streamed, r#"{"city":"Paris"}"#);
        let (name, response) = summary.terminal.expect("a terminal event");
        assert_eq!(name, COMPLETED);
        let call = &response["output"][0];
        assert_eq!(
            (&call["call_id"], &call["name"]),
            (&json!("call_Xq3bM9kTz2"), &json!("get_weather"))
        );
        assert_eq!(response["usage"]["total_tokens"], 74);
        assert_eq!(
            response["tools"][0]["name"], "get_weather",
            "tools as the client sent them"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for name in [
            "openai-chat.sse",
            "openai-chat-tools.sse",
            "litellm-usage.sse",
        ] {
            let bytes = golden(name);
            let whole = normalized(&replay_whole(&bytes).out);
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                let replay = replay(&[a, b]);
                assert!(replay.finished, "{name} split at {split}");
                assert_eq!(normalized(&replay.out), whole, "{name} split at {split}");
            }
        }
    }

    #[test]
    fn a_length_cut_answer_ends_incomplete() {
        let upstream = chat_stream(&[
            delta(json!({"role": "assistant", "content": ""}), None),
            delta(json!({"content": "Hel"}), None),
            delta(json!({"content": "lo"}), None),
            delta(json!({}), Some("length")),
            usage_chunk(5, 2),
        ]);
        let summary = check_stream(&events(&replay_whole(&upstream).out));
        let (name, response) = summary.terminal.expect("a terminal event");
        assert_eq!(name, INCOMPLETE);
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(response["output"][0]["content"][0]["text"], "Hello");
    }

    #[test]
    fn text_then_parallel_calls_are_numbered_in_the_order_they_open() {
        let upstream = chat_stream(&[
            delta(json!({"role": "assistant", "content": "Checking."}), None),
            delta(
                json!({"tool_calls": [call(Some(0), Some("call_a"), Some("w"), "")]}),
                None,
            ),
            delta(
                json!({"tool_calls": [call(Some(0), None, None, "{\"c\":")]}),
                None,
            ),
            delta(
                json!({"tool_calls": [call(Some(1), Some("call_b"), Some("t"), "{}")]}),
                None,
            ),
            delta(
                json!({"tool_calls": [call(Some(0), None, None, "\"Paris\"}")]}),
                None,
            ),
            delta(json!({}), Some("tool_calls")),
        ]);
        let replay = replay_whole(&upstream);
        let summary = check_stream(&events(&replay.out));
        let kinds: Vec<&str> = summary.items.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["message", "function_call", "function_call"]);
        let (_, response) = summary.terminal.expect("a terminal event");
        let output = &response["output"];
        assert_eq!(
            output[1]["arguments"], r#"{"c":"Paris"}"#,
            "fragments follow their index"
        );
        assert_eq!(
            (&output[1]["call_id"], &output[2]["call_id"]),
            (&json!("call_a"), &json!("call_b"))
        );
        assert!(response["usage"].is_null(), "no usage arrived");
        assert!(!replay.metering.reported);
        assert!(
            replay.metering.counted_completion.is_some_and(|n| n > 0),
            "counted instead"
        );
    }

    #[test]
    fn calls_without_an_index_are_told_apart_by_their_ids() {
        // Ollama and Gemini send each call whole, with no index.
        let upstream = chat_stream(&[
            delta(
                json!({"tool_calls": [call(None, Some("call_1"), Some("w"), "{\"c\":\"Paris\"}")]}),
                None,
            ),
            delta(
                json!({"tool_calls": [call(None, Some("call_2"), Some("w"), "{\"c\":\"Rome\"}")]}),
                None,
            ),
            delta(
                json!({"tool_calls": [call(None, None, None, "")]}),
                Some("tool_calls"),
            ),
        ]);
        let summary = check_stream(&events(&replay_whole(&upstream).out));
        let (_, response) = summary.terminal.expect("a terminal event");
        assert_eq!(response["output"].as_array().map(Vec::len), Some(2));
        assert_eq!(response["output"][1]["arguments"], r#"{"c":"Rome"}"#);
    }

    #[test]
    fn content_after_the_finish_reason_still_counts() {
        // LiteLLM repeats the finish reason with the last token.
        let upstream = golden("litellm-usage.sse");
        let summary = check_stream(&events(&replay_whole(&upstream).out));
        assert_eq!(summary.items[0].streamed, "Hi there!");
        let (_, response) = summary.terminal.expect("a terminal event");
        assert_eq!(response["usage"]["total_tokens"], 10, "the latest report");
    }

    #[test]
    fn an_empty_stream_still_opens_and_completes_the_response() {
        let summary = check_stream(&events(&replay_whole(b"data: [DONE]\n\n").out));
        let (name, response) = summary.terminal.expect("a terminal event");
        assert_eq!(
            (name.as_str(), &response["output"]),
            (COMPLETED, &json!([]))
        );
    }

    #[test]
    fn upstream_errors_end_the_stream_with_nothing_half_written() {
        let first = delta(json!({"content": "Hi"}), None).to_string();
        let rows: [(Vec<u8>, &str); 6] = [
            (
                format!("data: {first}\n\nevent: error\ndata: {{\"message\":\"boom\"}}\n\n").into(),
                "upstream_in_band",
            ),
            (
                format!("data: {first}\n\ndata: {{\"error\":{{\"message\":\"boom\"}}}}\n\n").into(),
                "upstream_in_band",
            ),
            (golden("vllm-in-band-error.sse"), "upstream_in_band"),
            (
                format!("data: {first}\n\ndata: not json\n\n").into(),
                "upstream_protocol",
            ),
            (
                b"data: {\"choices\":{\"index\":0}}\n\n".to_vec(),
                "upstream_protocol",
            ),
            (
                chat_stream(&[delta(
                    json!({"tool_calls": [call(Some(129), Some("c"), Some("f"), "{}")]}),
                    None,
                )]),
                "upstream_protocol",
            ),
        ];
        for (upstream, kind) in rows {
            let replay = replay(&[&upstream]);
            let error = replay.error.as_ref().map(GatewayError::kind);
            assert_eq!(error, Some(kind), "{}", String::from_utf8_lossy(&upstream));
            check_stream(&events(&replay.out));
            assert_eq!(replay.sequence, events(&replay.out).len() as u64);
        }
        let refused_first = replay(&[&chat_stream(&[delta(
            json!({"tool_calls": [call(Some(500), None, None, "")]}),
            None,
        )])]);
        assert!(
            refused_first.out.is_empty() && refused_first.sequence == 0,
            "not even opened"
        );
    }

    #[test]
    fn an_upstream_opening_endless_calls_is_refused() {
        let chunks: Vec<Value> = (0..=MAX_FUNCTION_CALLS)
            .map(|n| delta(json!({"tool_calls": [call(Some(0), Some(&format!("call_{n}")), Some("f"), "")]}), None))
            .collect();
        let replay = replay(&[&chat_stream(&chunks)]);
        assert_eq!(
            replay.error.as_ref().map(GatewayError::kind),
            Some("upstream_protocol")
        );
        assert_eq!(
            check_stream(&events(&replay.out)).items.len(),
            MAX_FUNCTION_CALLS
        );
    }

    mod properties {
        use bytes::Bytes;
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::{cases, split_at};

        /// One upstream chunk.
        #[derive(Debug, Clone)]
        enum Op {
            Text(String),
            Call {
                index: Option<u64>,
                id: Option<&'static str>,
                name: Option<&'static str>,
                arguments: String,
            },
            Finish(&'static str),
            Usage,
        }

        fn op() -> impl Strategy<Value = Op> {
            let id = prop::option::of(prop::sample::select(vec!["call_a", "call_b", ""]));
            let name = prop::option::of(prop::sample::select(vec!["f", "g"]));
            prop_oneof![
                4 => "\\PC{0,6}".prop_map(Op::Text),
                4 => (prop::option::of(0u64..3), id, name, "\\PC{0,6}").prop_map(
                    |(index, id, name, arguments)| Op::Call { index, id, name, arguments }
                ),
                1 => prop::sample::select(vec!["stop", "length", "tool_calls", "content_filter"]).prop_map(Op::Finish),
                1 => Just(Op::Usage),
            ]
        }

        fn chunk(op: &Op) -> Value {
            match op {
                Op::Text(text) => delta(json!({"content": text}), None),
                Op::Call {
                    index,
                    id,
                    name,
                    arguments,
                } => delta(
                    json!({"tool_calls": [call(*index, *id, *name, arguments)]}),
                    None,
                ),
                Op::Finish(reason) => delta(json!({}), Some(reason)),
                Op::Usage => usage_chunk(3, 4),
            }
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_event_data_never_panics(
                data in prop::collection::vec(any::<u8>(), 0..200),
                named_error in any::<bool>(),
            ) {
                let mut rewriter = ChatToResponses::new(
                    "alias", echo(), Arc::default(), MeterSlot::default(), o200k(),
                );
                let name = if named_error { Bytes::from_static(b"error") } else { Bytes::new() };
                let mut out = BytesMut::new();
                match rewriter.on_event(Event { name, data: data.into() }, &mut out) {
                    Ok(Step::Send | Step::Finish) => {
                        let events = events(&out);
                        prop_assert!(!events.is_empty());
                        check_stream(&events);
                    }
                    Ok(Step::Skip) | Err(_) => prop_assert!(out.is_empty(), "nothing appended"),
                }
            }

            #[test]
            fn any_chunk_sequence_split_anywhere_is_a_well_formed_event_stream(
                ops in prop::collection::vec(op(), 0..24),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            ) {
                let chunks: Vec<Value> = ops.iter().map(chunk).collect();
                let upstream = chat_stream(&chunks);
                let replay = replay(&split_at(&upstream, &cuts));
                prop_assert!(replay.finished, "{:?}", replay.error);
                let summary = check_stream(&events(&replay.out));
                let texts: String = ops.iter().filter_map(|op| match op {
                    Op::Text(text) => Some(text.as_str()),
                    _ => None,
                }).collect();
                let message = summary.items.iter().find(|s| s.kind == "message");
                prop_assert_eq!(message.map_or("", |m| m.streamed.as_str()), texts.as_str());
                let last_reason = ops.iter().rev().find_map(|op| match op {
                    Op::Finish(reason) => Some(*reason),
                    _ => None,
                });
                let expected = match last_reason {
                    Some("length" | "content_filter") => INCOMPLETE,
                    _ => COMPLETED,
                };
                let (name, _) = summary.terminal.expect("a terminal event");
                prop_assert_eq!(name, expected);
            }
        }
    }
}
