//! `StreamMeter`: what a relayed stream generated, as every stream rewrite meters it (chat
//! chunks, Responses events, the translations), left in the request's meter slot for
//! settlement when the stream is dropped, however it ended.

use tokio::time::Instant;

use super::chunk::MeterSlot;
use super::tokens::{CompletionTally, TokenCounter};
use super::usage::{Metering, Usage};
use super::view::ObjectView;

#[derive(Debug)]
pub struct StreamMeter {
    metering: Metering,
    /// What was generated, counted only if no usage report arrives.
    tally: CompletionTally,
    slot: MeterSlot,
}

/// What a chat chunk carried, for the rewrite to decide what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkShare {
    pub has_usage: bool,
    /// It is the usage chunk, in OpenAI's shape (`"choices":[]`) or another server's (choices
    /// with empty deltas), carrying nothing else.
    pub usage_only: bool,
}

impl StreamMeter {
    pub fn new(counter: TokenCounter, slot: MeterSlot) -> Self {
        Self {
            metering: Metering::default(),
            tally: CompletionTally::new(counter),
            slot,
        }
    }

    /// The upstream's report of the answer's usage.
    pub fn reported(&mut self, usage: Usage) {
        self.metering.usage = Some(usage);
        self.metering.reported = true;
    }

    /// Usage known before the answer's report (Anthropic's `message_start`): metered, and
    /// raised to the counted output should no report follow.
    pub fn so_far(&mut self, usage: Usage) {
        self.metering.usage = Some(usage);
    }

    /// Output reached the client; `generated` is its raw JSON (a `choices` array or a JSON
    /// string), kept for counting.
    pub fn output(&mut self, generated: Option<&str>) {
        self.metering.chunks = self.metering.chunks.saturating_add(1);
        let now = Instant::now();
        self.metering.first_token_at.get_or_insert(now);
        self.metering.last_token_at = Some(now);
        if let Some(generated) = generated {
            self.count(generated);
        }
    }

    /// Keeps generated output (raw JSON, as for `output`) for counting, apart from the chunk
    /// that carries it.
    pub fn count(&mut self, generated: &str) {
        self.tally.push_choices(generated);
    }

    /// Meters a `chat.completion.chunk`: its usage report, and its choices when they carry
    /// output.
    pub fn chat_chunk(&mut self, view: &ObjectView<'_>) -> ChunkShare {
        let usage = view.usage();
        let usage_only = usage.is_some() && view.choices_carry_nothing();
        if let Some(usage) = usage {
            self.reported(usage);
        }
        if !usage_only && !view.has_no_choices() {
            self.output(view.choices());
        }
        ChunkShare {
            has_usage: usage.is_some(),
            usage_only,
        }
    }
}

impl Drop for StreamMeter {
    /// Leaves the metering for the request guard, which settles after the body is dropped.
    /// Without a report the output is counted (and usage known so far raised to it).
    fn drop(&mut self) {
        let mut metering = self.metering;
        if !metering.reported && metering.chunks > 0 {
            let counted = self.tally.total();
            metering.counted_completion = Some(counted);
            if let Some(usage) = &mut metering.usage {
                usage.completion_tokens = usage.completion_tokens.max(counted);
                usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            }
        }
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = metering;
    }
}
