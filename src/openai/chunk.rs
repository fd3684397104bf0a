//! Streaming chunk rewrite: model alias restored, usage captured, the usage chunk dropped when
//! the client did not ask for it, in-band upstream errors turned into the final error event.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::meter::StreamMeter;
use super::sanitize::in_band_error;
use super::tokens::TokenCounter;
use super::usage::Metering;
use super::view::ObjectView;
use crate::error::GatewayError;
use crate::sse::Event;
use crate::sse::encoder::put_data_event;
use crate::sse::relay::{Rewrite, Step};

/// The terminating event, forwarded only when the upstream sent its own.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// Where a response's metering is left for settlement.
pub type MeterSlot = Arc<Mutex<Metering>>;

/// The per-stream [`Rewrite`] for `chat.completion.chunk` events.
#[derive(Debug)]
pub struct ChunkRewriter {
    model_json: Bytes,
    include_usage: bool,
    meter: StreamMeter,
}

impl ChunkRewriter {
    /// `model` is the client-facing name written into every chunk; `counter` counts the
    /// answer when the upstream reports no usage.
    pub fn new(model: &str, include_usage: bool, counter: TokenCounter, slot: MeterSlot) -> Self {
        Self {
            model_json: serde_json::to_vec(model)
                .expect("invariant: a string serialises")
                .into(),
            include_usage,
            meter: StreamMeter::new(counter, slot),
        }
    }
}

impl Rewrite for ChunkRewriter {
    type Error = GatewayError;

    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        if event.data.trim_ascii() == b"[DONE]" {
            out.extend_from_slice(DONE);
            return Ok(Step::Finish);
        }
        if &event.name[..] == b"error" {
            return Err(in_band_error(&event.data));
        }
        let view = ObjectView::parse(&event.data).map_err(|_| GatewayError::UpstreamProtocol {
            detail: "a stream event is not a JSON object",
        })?;
        if let Some(error) = view.error() {
            return Err(in_band_error(error.as_bytes()));
        }
        let share = self.meter.chat_chunk(&view);
        // A chunk with no choices and no usage carries nothing a chat client reads (Azure's
        // prompt-filter results): not forwarded, as OpenAI sends none.
        if !share.has_usage && view.has_no_choices() {
            return Ok(Step::Skip);
        }
        // The usage chunk is dropped when the client did not ask for usage; usage riding on a
        // chunk that carries more is hidden (`"usage":null`) instead.
        let hide_usage = share.has_usage && !self.include_usage;
        if hide_usage && share.usage_only {
            return Ok(Step::Skip);
        }
        out.reserve(event.data.len() + self.model_json.len() + 8);
        if memchr::memchr(b'\n', &event.data).is_none() {
            // The usual one-line payload is spliced straight into the outgoing event.
            out.extend_from_slice(b"data: ");
            view.put_rewritten(&event.data, &self.model_json, hide_usage, out);
            out.extend_from_slice(b"\n\n");
        } else {
            let mut payload = BytesMut::new();
            view.put_rewritten(&event.data, &self.model_json, hide_usage, &mut payload);
            put_data_event(out, &payload);
        }
        Ok(Step::Send)
    }
}

/// The rewrite of a chat stream: OpenAI's chunks relayed, or Anthropic's Messages events
/// translated to them.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the common case stays inline (no allocation a stream); the rare translation is boxed"
)]
pub enum ChatChunks {
    Relayed(ChunkRewriter),
    FromMessages(Box<super::anthropic::MessagesToChunks>),
}

impl Rewrite for ChatChunks {
    type Error = GatewayError;

    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        match self {
            Self::Relayed(chunks) => chunks.on_event(event, out),
            Self::FromMessages(messages) => messages.on_event(event, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Usage;
    use crate::sse::Decoder;
    use crate::test_support::o200k;

    fn run(golden: &str, include_usage: bool) -> (Vec<Result<String, String>>, Option<Usage>) {
        let slot = MeterSlot::default();
        let bytes = std::fs::read(format!("{}/proto/{golden}", env!("CARGO_MANIFEST_DIR")))
            .expect("golden exists");
        let mut rewriter = ChunkRewriter::new("alias", include_usage, o200k(), slot.clone());
        let mut decoder = Decoder::new(1 << 20);
        decoder.feed(&bytes);
        let mut out = Vec::new();
        while let Some(event) = decoder.next_event().expect("golden decodes") {
            let mut sent = BytesMut::new();
            match rewriter.on_event(event, &mut sent) {
                Ok(Step::Send | Step::Finish) => {
                    out.push(Ok(String::from_utf8(sent.to_vec()).expect("utf-8")))
                }
                Ok(Step::Skip) => {}
                Err(e) => out.push(Err(e.kind().to_owned())),
            }
        }
        drop(rewriter);
        let usage = slot.lock().expect("not poisoned").usage;
        (out, usage)
    }

    #[test]
    fn rewrites_model_and_keeps_content_bytes_exactly() {
        let (out, usage) = run("openai-chat.sse", false);
        assert_eq!(out.len(), 5, "usage chunk dropped: 4 chunks and [DONE]");
        assert!(
            out.iter()
                .all(|e| !e.as_ref().expect("no errors").contains("gpt-4o-mini"))
        );
        assert!(
            out[2]
                .as_ref()
                .expect("ok")
                .contains(r#""content":" \r\n\ndata: [DONE]\n\n""#)
        );
        assert_eq!(out[4].as_ref().expect("ok"), "data: [DONE]\n\n");
        assert_eq!(usage.map(|u| u.total_tokens), Some(12));
    }

    #[test]
    fn another_servers_usage_chunk_is_recognised_by_its_empty_deltas() {
        let (out, usage) = run("litellm-usage.sse", false);
        let sent: Vec<&str> = out
            .iter()
            .map(|e| e.as_ref().expect("no errors").as_str())
            .collect();
        assert_eq!(sent.len(), 5, "the usage-only chunk is dropped: {sent:#?}");
        assert!(
            sent.iter().all(|e| !e.contains("\"total_tokens\"")),
            "no usage reaches a client that did not ask: {sent:#?}"
        );
        assert!(
            sent[3].contains(r#""content":"!""#) && sent[3].contains(r#""usage":null"#),
            "usage riding on a content chunk is hidden, the content kept: {}",
            sent[3]
        );
        assert_eq!(usage.map(|u| u.total_tokens), Some(10), "still metered");

        let (out, _) = run("litellm-usage.sse", true);
        assert_eq!(out.len(), 6, "everything forwarded when the client asked");
        assert!(out[3].as_ref().expect("ok").contains(r#""total_tokens":9"#));
    }

    #[test]
    fn azures_prompt_filter_chunk_is_dropped_and_its_usage_read() {
        let (out, usage) = run("azure-chat.sse", false);
        let sent: Vec<&str> = out
            .iter()
            .map(|e| e.as_ref().expect("no errors").as_str())
            .collect();
        assert_eq!(
            sent.len(),
            6,
            "the prompt-filter and usage chunks dropped: {sent:#?}"
        );
        assert!(
            sent.iter().all(|e| !e.contains("prompt_filter_results")),
            "no chunk without choices reaches a chat client"
        );
        assert!(sent[3].contains(r#""content":" Azure — ok""#));
        assert_eq!(usage.map(|u| u.total_tokens), Some(12));
    }

    #[test]
    fn azures_golden_stream_is_the_same_at_every_split() {
        let bytes = std::fs::read(format!(
            "{}/proto/azure-chat.sse",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("golden exists");
        let replay = |pieces: &[&[u8]]| {
            let mut rewriter = ChunkRewriter::new("alias", true, o200k(), MeterSlot::default());
            let mut decoder = Decoder::new(1 << 20);
            let mut out = BytesMut::new();
            for piece in pieces {
                decoder.feed(piece);
                while let Some(event) = decoder.next_event().expect("decodes") {
                    rewriter.on_event(event, &mut out).expect("no errors");
                }
            }
            out
        };
        let whole = replay(&[&bytes]);
        assert!(whole.ends_with(b"data: [DONE]\n\n"));
        for split in 0..=bytes.len() {
            assert_eq!(
                replay(&[&bytes[..split], &bytes[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn usage_chunk_kept_when_asked_and_in_band_errors_end_the_stream() {
        let (out, _) = run("openai-chat.sse", true);
        assert_eq!(out.len(), 6, "usage chunk forwarded");
        let (out, _) = run("vllm-in-band-error.sse", false);
        assert_eq!(out.last(), Some(&Err("upstream_in_band".to_owned())));
    }

    mod properties {
        use proptest::prelude::*;

        use crate::test_support::cases;
        use serde_json::{Value, json};

        use super::*;

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_event_data_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
                let mut rewriter = ChunkRewriter::new("alias", false, o200k(), MeterSlot::default());
                let event = Event { name: Bytes::new(), data: data.into() };
                let mut out = BytesMut::new();
                match rewriter.on_event(event, &mut out) {
                    Ok(Step::Send | Step::Finish) => {
                        prop_assert!(out.starts_with(b"data: ") && out.ends_with(b"\n\n"));
                    }
                    Ok(Step::Skip) | Err(_) => prop_assert!(out.is_empty(), "nothing appended"),
                }
            }

            #[test]
            fn any_chunk_comes_out_as_json_naming_the_alias(
                model in "\\PC{0,16}",
                content in "\\PC{0,32}",
                with_usage in any::<bool>(),
                include_usage in any::<bool>(),
            ) {
                let mut chunk = json!({
                    "id": "c", "model": model,
                    "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
                });
                if with_usage {
                    chunk["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3});
                }
                let data = serde_json::to_vec(&chunk).expect("serialises");
                let mut rewriter = ChunkRewriter::new("alias", include_usage, o200k(), MeterSlot::default());
                let event = Event { name: Bytes::new(), data: data.into() };
                let mut out = BytesMut::new();
                let Ok(Step::Send) = rewriter.on_event(event, &mut out) else {
                    return Err(TestCaseError::fail("a content chunk is sent"));
                };
                let text = std::str::from_utf8(&out).expect("UTF-8");
                let json = text.strip_prefix("data: ").and_then(|t| t.strip_suffix("\n\n")).expect("one event");
                let sent: Value = serde_json::from_str(json).expect("still JSON");
                prop_assert_eq!(&sent["model"], "alias");
                prop_assert_eq!(&sent["choices"][0]["delta"]["content"], &Value::String(content));
                prop_assert_eq!(sent["usage"].is_object(), with_usage && include_usage);
            }
        }
    }
}
