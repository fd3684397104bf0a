//! The Responses API's typed event stream, passed through: every event keeps its `event:` line
//! and its bytes, but the model named inside its `response` object is the client's; usage is
//! read from the terminal event; the stream ends right after `response.completed` or
//! `response.incomplete`. `response.failed` and `event: error` end it as the backend's failure
//! (the caller tells it as the stream's last event).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ResponseId;
use crate::error::GatewayError;
use crate::openai::chunk::MeterSlot;
use crate::openai::meter::StreamMeter;
use crate::openai::sanitize::in_band_error;
use crate::openai::tokens::TokenCounter;
use crate::openai::view::ObjectView;
use crate::sse::Event;
use crate::sse::encoder::put_data_event;
use crate::sse::relay::{Rewrite, Step};

/// The events after which a response has nothing more to say (`response.failed` too, told
/// as an error).
const TERMINAL: [&str; 2] = ["response.completed", "response.incomplete"];

/// What a stream told of the response it created, for routing later calls to its backend.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: Option<ResponseId>,
    /// The tokens a continuation of it carries as context (its input plus its output), once
    /// its terminal event reported them.
    pub context_tokens: Option<u64>,
}

/// Where a stream leaves what it learnt of its response.
pub type CreatedSlot = Arc<Mutex<Created>>;

/// The sequence number the next event of a stream should carry: kept by the rewrite, read
/// when a failure has to be told as the stream's last event.
pub type Sequence = Arc<AtomicU64>;

/// The per-stream [`Rewrite`] for a backend that serves the Responses API itself.
#[derive(Debug)]
pub struct ResponseEvents {
    model_json: Bytes,
    meter: StreamMeter,
    sequence: Sequence,
    created: CreatedSlot,
}

/// The fields of an event the gateway reads; everything else is copied unparsed.
#[derive(Debug, Deserialize)]
struct EventView<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sequence_number: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
}

impl ResponseEvents {
    /// `model` is the client-facing name written into every `response` object.
    pub fn new(
        model: &str,
        counter: TokenCounter,
        slot: MeterSlot,
        sequence: Sequence,
        created: CreatedSlot,
    ) -> Self {
        Self {
            model_json: serde_json::to_vec(model)
                .expect("invariant: a string serialises")
                .into(),
            meter: StreamMeter::new(counter, slot),
            sequence,
            created,
        }
    }

    /// Reads the `response` object of an event (`raw`): its id once, its usage when terminal.
    fn on_response(&mut self, raw: &RawValue, response: &ObjectView<'_>, terminal: bool) {
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if created.id.is_none() {
            created.id = ResponseId::of_object(raw.get().as_bytes());
        }
        if !terminal {
            return;
        }
        if let Some(usage) = response.responses_usage() {
            self.meter.reported(usage);
            created.context_tokens = Some(usage.context());
        }
    }
}

impl Rewrite for ResponseEvents {
    type Error = GatewayError;

    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        if &event.name[..] == b"error" {
            return Err(in_band_error(&event.data));
        }
        let view: EventView<'_> =
            serde_json::from_slice(&event.data).map_err(|_| GatewayError::UpstreamProtocol {
                detail: "a stream event is not a JSON object",
            })?;
        let kind = view.kind.as_deref().unwrap_or_default();
        if kind == "error" {
            return Err(in_band_error(&event.data));
        }
        let response = view.response.and_then(|raw| {
            let view = ObjectView::parse(raw.get().as_bytes()).ok()?;
            Some((raw, view))
        });
        if kind == "response.failed" {
            // A failed response is the backend's failure (its breaker hears of it): told as the
            // gateway's final error event, with whatever usage it reported still charged.
            let error = response.as_ref().and_then(|(raw, view)| {
                self.on_response(raw, view, true);
                view.error()
            });
            return Err(in_band_error(error.unwrap_or("{}").as_bytes()));
        }
        // Numbered after the upstream's number, or after the last event when it gave none.
        let next = view
            .sequence_number
            .and_then(|raw| raw.get().parse::<u64>().ok())
            .unwrap_or_else(|| self.sequence.load(Ordering::Relaxed))
            .saturating_add(1);
        self.sequence.store(next, Ordering::Relaxed);
        if kind.ends_with(".delta") {
            // A text delta is kept for counting (a JSON string); others only count as output.
            let text = view.delta.map(RawValue::get).filter(|d| d.starts_with('"'));
            self.meter.output(text);
        }
        let terminal = TERMINAL.contains(&kind);
        out.reserve(event.data.len() + self.model_json.len() + event.name.len() + 16);
        if !event.name.is_empty() {
            out.put_slice(b"event: ");
            out.put_slice(&event.name);
            out.put_slice(b"\n");
        }
        if memchr::memchr(b'\n', &event.data).is_none() {
            out.put_slice(b"data: ");
            put_rewritten(&event.data, response.as_ref(), &self.model_json, out);
            out.put_slice(b"\n\n");
        } else {
            let mut payload = BytesMut::new();
            put_rewritten(
                &event.data,
                response.as_ref(),
                &self.model_json,
                &mut payload,
            );
            put_data_event(out, &payload);
        }
        if let Some((raw, response)) = &response {
            self.on_response(raw, response, terminal);
        }
        Ok(if terminal { Step::Finish } else { Step::Send })
    }
}

/// Appends `data` with the `model` of its nested `response` object (when it has one) replaced.
fn put_rewritten(
    data: &[u8],
    response: Option<&(&RawValue, ObjectView<'_>)>,
    model_json: &[u8],
    out: &mut BytesMut,
) {
    let Some((raw, view)) = response else {
        out.put_slice(data);
        return;
    };
    let nested = raw.get().as_bytes();
    let Some(start) = (nested.as_ptr() as usize).checked_sub(data.as_ptr() as usize) else {
        out.put_slice(data);
        return;
    };
    out.put_slice(&data[..start]);
    view.put_rewritten(nested, model_json, false, out);
    out.put_slice(&data[start + nested.len()..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Usage;
    use crate::sse::Decoder;
    use crate::test_support::golden;

    struct Run {
        out: String,
        steps: Vec<Step>,
        error: Option<String>,
        usage: Option<Usage>,
        created: Created,
        next_sequence: u64,
    }

    fn replay(pieces: &[&[u8]]) -> Run {
        let slot = MeterSlot::default();
        let sequence = Sequence::default();
        let created = CreatedSlot::default();
        let mut rewriter = ResponseEvents::new(
            "alias",
            TokenCounter::new(crate::config::Tokenizer::O200kBase),
            slot.clone(),
            sequence.clone(),
            created.clone(),
        );
        let mut decoder = Decoder::new(1 << 20);
        let (mut out, mut steps, mut error) = (BytesMut::new(), Vec::new(), None);
        'feed: for piece in pieces {
            decoder.feed(piece);
            while let Some(event) = decoder.next_event().expect("decodes") {
                match rewriter.on_event(event, &mut out) {
                    Ok(step) => {
                        steps.push(step);
                        if step == Step::Finish {
                            break 'feed;
                        }
                    }
                    Err(e) => {
                        error = Some(e.kind().to_owned());
                        break 'feed;
                    }
                }
            }
        }
        drop(rewriter);
        let usage = slot.lock().expect("not poisoned").usage;
        let created = created.lock().expect("not poisoned").clone();
        Run {
            out: String::from_utf8(out.to_vec()).expect("UTF-8"),
            steps,
            error,
            usage,
            created,
            next_sequence: sequence.load(Ordering::Relaxed),
        }
    }

    #[test]
    fn the_golden_stream_passes_byte_for_byte_but_for_the_model_at_every_split() {
        let golden = golden("openai-responses.sse");
        let expected = String::from_utf8(golden.clone())
            .expect("UTF-8")
            .replace("\"gpt-4.1-mini-2025-04-14\"", "\"alias\"");
        for split in 0..=golden.len() {
            let run = replay(&[&golden[..split], &golden[split..]]);
            assert_eq!(run.out, expected, "split at {split}");
            assert_eq!(run.steps.len(), 12);
            assert_eq!(run.steps.last(), Some(&Step::Finish));
            assert_eq!(
                run.usage,
                Some(Usage {
                    prompt_tokens: 21,
                    completion_tokens: 9,
                    total_tokens: 30
                })
            );
            assert_eq!(run.next_sequence, 12);
            assert_eq!(
                run.created.id.as_ref().map(ResponseId::as_str),
                Some("resp_0c1f8a3e2b7d4f6a9e5b1c2d3e4f5a6b7c8d9e0f1a2b3c4d")
            );
            assert_eq!(run.created.context_tokens, Some(30));
        }
    }

    #[test]
    fn the_stream_ends_at_the_terminal_event_and_errors_end_it_early() {
        let mut golden = golden("openai-responses-tools.sse");
        golden.extend_from_slice(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"late\"}\n\n");
        let run = replay(&[&golden]);
        assert!(
            !run.out.contains("late"),
            "nothing after the terminal event"
        );
        assert_eq!(run.usage.map(|u| u.total_tokens), Some(74));

        let text = String::from_utf8(golden).expect("UTF-8");
        let cut = text
            .find("event: response.output_item.done")
            .expect("present");
        let failing = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"overloaded\",\"param\":null,\"sequence_number\":6}}\n\n",
            &text[..cut]
        );
        let run = replay(&[failing.as_bytes()]);
        assert_eq!(run.error.as_deref(), Some("upstream_in_band"));
        assert_eq!(run.next_sequence, 6, "the failure is told as event 6");
        assert_eq!(run.usage, None, "no report: counted instead");
    }

    #[test]
    fn a_failed_response_is_the_backends_failure_with_its_usage_charged() {
        let failed = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"model\":\"m\"}}\n\n",
            "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",",
            "\"error\":{\"code\":\"server_error\",\"message\":\"the model crashed\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":2,\"total_tokens\":7}}}\n\n",
        );
        let run = replay(&[failed.as_bytes()]);
        assert_eq!(run.error.as_deref(), Some("upstream_in_band"));
        assert!(
            !run.out.contains("response.failed"),
            "told as the gateway's error"
        );
        assert_eq!(
            run.next_sequence, 1,
            "the error takes the failed event's number"
        );
        assert_eq!(run.usage.map(|u| u.total_tokens), Some(7));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::cases;

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_event_data_never_panics(
                name in prop::collection::vec(any::<u8>(), 0..24),
                data in prop::collection::vec(any::<u8>(), 0..200),
            ) {
                let mut rewriter = ResponseEvents::new(
                    "alias",
                    TokenCounter::new(crate::config::Tokenizer::O200kBase),
                    MeterSlot::default(),
                    Sequence::default(),
                    CreatedSlot::default(),
                );
                let event = Event { name: name.into(), data: data.into() };
                let mut out = BytesMut::new();
                match rewriter.on_event(event, &mut out) {
                    Ok(_) => prop_assert!(out.ends_with(b"\n\n")),
                    Err(_) => prop_assert!(out.is_empty()),
                }
            }
        }
    }
}
