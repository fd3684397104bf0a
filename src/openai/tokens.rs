//! Token counting with the model's real tokenizer (tiktoken's BPE encodings), for answers whose
//! upstream reported no usage: a stream cut short, a backend that ignores `include_usage`.
//!
//! A stream keeps the raw `choices` of its chunks in a small buffer, counted two kilobytes at a
//! time (a short answer is never counted unless its usage is missing); prompts and whole
//! answers are counted when the request ends, and only without a usage report. At most
//! `EXACT_BYTES` of text are tokenized per count, never more (a chunk that would pass the
//! budget is not tokenized); the rest is extrapolated, never below one token per three bytes,
//! so one request costs at most a few milliseconds of tokenizing whatever its size.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::config::Tokenizer;

/// Text counted exactly per prompt or answer; the rest is extrapolated at the rate seen.
const EXACT_BYTES: usize = 64 * 1024;
/// Stream choices buffered before they are counted (a fraction of a millisecond of work).
const TALLY_FLUSH_BYTES: usize = 2 * 1024;

/// Counts with a tokenizer's encoding, which is loaded once per process on first use (about
/// 0.1 s; the server warms it before `/readyz` says ready), never when nothing is counted.
#[derive(Debug, Clone, Copy)]
pub struct TokenCounter(Tokenizer);

impl TokenCounter {
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self(tokenizer)
    }

    /// Loads the encoding now.
    pub fn warm(self) {
        self.bpe();
    }

    /// Tokens of `text` as the model sees ordinary text.
    pub fn count(self, text: &str) -> u64 {
        self.bpe().count_ordinary(text) as u64
    }

    fn bpe(self) -> &'static CoreBPE {
        tiktoken_rs::bpe_for_tokenizer(self.0).expect("invariant: encodings are embedded")
    }

    /// A count that stops being exact after `EXACT_BYTES` of text.
    pub fn budgeted(self) -> BudgetedCount {
        BudgetedCount {
            counter: self,
            left: EXACT_BYTES,
            tokens: 0,
            counted_bytes: 0,
            skipped_bytes: 0,
        }
    }
}

/// Tokens of many pieces of text: exact within the budget, then extrapolated at the rate of
/// the counted part but never below one token per three bytes (so text that tokenizes cheaply
/// cannot stand in for what follows it).
#[derive(Debug)]
pub struct BudgetedCount {
    counter: TokenCounter,
    left: usize,
    tokens: u64,
    counted_bytes: u64,
    skipped_bytes: u64,
}

impl BudgetedCount {
    pub fn add(&mut self, text: &str) {
        let mut take = text.len().min(self.left);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        let (counted, skipped) = text.split_at(take);
        if !counted.is_empty() {
            self.tokens = self.tokens.saturating_add(self.counter.count(counted));
        }
        self.left -= counted.len();
        self.counted_bytes = self.counted_bytes.saturating_add(counted.len() as u64);
        self.skipped_bytes = self.skipped_bytes.saturating_add(skipped.len() as u64);
    }

    /// `value` as the model reads a structured field: its JSON text.
    pub fn add_json(&mut self, value: &Value) {
        if !value.is_null() {
            self.add(&value.to_string());
        }
    }

    pub fn total(&self) -> u64 {
        self.tokens.saturating_add(extrapolate(
            self.tokens,
            self.counted_bytes,
            self.skipped_bytes,
        ))
    }
}

/// Tokens for `skipped` bytes at the rate `tokens` per `counted` bytes, at least one per three.
fn extrapolate(tokens: u64, counted: u64, skipped: u64) -> u64 {
    let floor = skipped.div_ceil(3);
    if skipped == 0 || counted == 0 {
        return floor;
    }
    let at_rate = (skipped as f64 * tokens as f64 / counted as f64).ceil() as u64;
    at_rate.max(floor)
}

/// The completion tokens of a streamed answer, counted from its chunks' `choices`: exactly
/// while the raw `choices` JSON stays within `EXACT_BYTES`, then extrapolated by the rate seen
/// so far (chunks keep one shape, so tokens per raw byte hold; the wrapper of each chunk makes
/// the three-byte floor moot), which bounds the work a long or hostile stream can cause.
#[derive(Debug)]
pub struct CompletionTally {
    counter: TokenCounter,
    /// Raw `choices` arrays not yet counted, one after another.
    pending: Vec<u8>,
    tokens: u64,
    counted_bytes: u64,
    skipped_bytes: u64,
}

impl CompletionTally {
    pub fn new(counter: TokenCounter) -> Self {
        Self {
            counter,
            pending: Vec::new(),
            tokens: 0,
            counted_bytes: 0,
            skipped_bytes: 0,
        }
    }

    /// Keeps one chunk's raw `choices` JSON (or a Responses event's `delta`, a JSON string)
    /// for counting.
    pub fn push_choices(&mut self, choices: &str) {
        let after = self.counted_bytes + self.pending.len() as u64 + choices.len() as u64 + 1;
        if after > EXACT_BYTES as u64 {
            // Measured as the buffer would hold it (with its separator), so the rate applies.
            self.skipped_bytes = self.skipped_bytes.saturating_add(choices.len() as u64 + 1);
            return;
        }
        self.pending.extend_from_slice(choices.as_bytes());
        self.pending.push(b' ');
        if self.pending.len() >= TALLY_FLUSH_BYTES {
            self.flush();
        }
    }

    /// Every token generated so far.
    pub fn total(&mut self) -> u64 {
        self.flush();
        if self.skipped_bytes == 0 {
            return self.tokens;
        }
        let extrapolated = if self.counted_bytes == 0 {
            // Nothing to take a rate from (the first chunk alone passed the budget).
            self.skipped_bytes.div_ceil(3)
        } else {
            let rate = self.tokens as f64 / self.counted_bytes as f64;
            (self.skipped_bytes as f64 * rate).ceil() as u64
        };
        self.tokens.saturating_add(extrapolated)
    }

    fn flush(&mut self) {
        let values = serde_json::Deserializer::from_slice(&self.pending).into_iter::<Value>();
        for generated in values.map_while(Result::ok) {
            if let Value::String(delta) = &generated {
                self.tokens = self.tokens.saturating_add(self.counter.count(delta));
            }
            for text in generated_texts(&generated) {
                self.tokens = self.tokens.saturating_add(self.counter.count(text));
            }
        }
        self.counted_bytes = self.counted_bytes.saturating_add(self.pending.len() as u64);
        self.pending.clear();
    }
}

/// The completion tokens of a whole (non-streamed) `chat.completion` body.
pub fn completion_tokens(body: &[u8], counter: TokenCounter) -> u64 {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut count = counter.budgeted();
    for text in generated_texts(&answer["choices"]) {
        count.add(text);
    }
    count.total()
}

/// What a model generated in `choices` (stream deltas or whole messages): content, refusals,
/// reasoning, tool call names and arguments, and legacy `text`.
fn generated_texts(choices: &Value) -> impl Iterator<Item = &str> {
    choices
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|choice| {
            let message = if choice["delta"].is_object() {
                &choice["delta"]
            } else {
                &choice["message"]
            };
            let tool_calls = message["tool_calls"].as_array().into_iter().flatten();
            [
                &choice["text"],
                &message["content"],
                &message["refusal"],
                &message["reasoning_content"],
            ]
            .into_iter()
            .chain(
                tool_calls
                    .flat_map(|call| [&call["function"]["name"], &call["function"]["arguments"]]),
            )
        })
        .filter_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cases;
    use crate::test_support::o200k;
    use proptest::prelude::*;

    #[test]
    fn a_tally_counts_every_delta_whatever_the_flushes() {
        let mut tally = CompletionTally::new(o200k());
        let chunk = r#"[{"index":0,"delta":{"content":"Hello world"}}]"#;
        for _ in 0..1000 {
            tally.push_choices(chunk);
        }
        tally.push_choices(
            r#"[{"index":0,"delta":{"tool_calls":[{"function":{"name":"get_weather","arguments":"{}"}}]}}]"#,
        );
        let expected = 1000 * o200k().count("Hello world")
            + o200k().count("get_weather")
            + o200k().count("{}");
        assert_eq!(tally.total(), expected);
    }

    #[test]
    fn a_long_stream_is_counted_exactly_then_extrapolated() {
        let chunk = r#"[{"index":0,"delta":{"content":" word"}}]"#;
        let mut tally = CompletionTally::new(o200k());
        for _ in 0..10_000 {
            tally.push_choices(chunk);
        }
        assert!(tally.skipped_bytes > 0, "past the exact budget");
        assert!(
            tally.total().abs_diff(10_000) <= 100,
            "{} is about 10,000",
            tally.total()
        );
    }

    #[test]
    fn a_chunk_past_the_budget_is_never_tokenized() {
        let huge = serde_json::json!([{"delta": {"content": "x".repeat(1 << 20)}}]).to_string();
        let mut tally = CompletionTally::new(o200k());
        tally.push_choices(&huge);
        assert_eq!((tally.counted_bytes, tally.pending.len()), (0, 0));
        assert!(tally.total() >= (1 << 20) / 3, "extrapolated at the floor");
    }

    #[test]
    fn a_whole_answer_counts_its_messages() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"The answer is 42."}},{"message":{"refusal":"No."}}]}"#;
        assert_eq!(
            completion_tokens(body, o200k()),
            o200k().count("The answer is 42.") + o200k().count("No.")
        );
        assert_eq!(completion_tokens(b"not json", o200k()), 0);
    }

    #[test]
    fn past_the_budget_the_count_is_extrapolated_never_below_a_token_per_three_bytes() {
        // Dense text (one token per two or three bytes) is extrapolated at its own rate.
        let dense = "7 ".repeat(EXACT_BYTES * 2);
        let exact = o200k().count(&dense);
        let mut count = o200k().budgeted();
        count.add(&dense);
        assert!(
            count.total().abs_diff(exact) * 100 <= exact,
            "{} within 1% of {exact}",
            count.total()
        );
        // Cheap text first cannot make the dense text after it cheap.
        let mut count = o200k().budgeted();
        count.add(&" ".repeat(EXACT_BYTES));
        count.add(&dense);
        assert!(count.total() >= dense.len() as u64 / 3);
    }

    proptest! {
        #![proptest_config(cases(64))]

        /// Whatever text the deltas carry, a tally within its budget counts exactly what
        /// counting each delta's text gives.
        #[test]
        fn a_tally_counts_each_deltas_text(texts in prop::collection::vec(any::<String>(), 0..40)) {
            let mut tally = CompletionTally::new(o200k());
            for text in &texts {
                let chunk = serde_json::json!([{"index": 0, "delta": {"content": text}}]);
                tally.push_choices(&chunk.to_string());
            }
            let expected: u64 = texts.iter().map(|t| o200k().count(t)).sum();
            prop_assert_eq!(tally.total(), expected);
        }

        /// Chunks from a hostile upstream that are not even JSON: counting never panics and a
        /// tally never counts more than one token per byte it was given.
        #[test]
        fn arbitrary_chunks_never_panic(chunks in prop::collection::vec(".{0,64}", 0..40)) {
            let mut tally = CompletionTally::new(o200k());
            let mut bytes = 0u64;
            for chunk in &chunks {
                tally.push_choices(chunk);
                bytes += chunk.len() as u64 + 1;
            }
            prop_assert!(tally.total() <= bytes);
        }

        #[test]
        fn multibyte_text_is_cut_on_char_boundaries(text in "[a-zé漢😀 ]{0,200}", left in 0usize..100) {
            let mut count = o200k().budgeted();
            count.left = left;
            count.add(&text);
            prop_assert!(count.total() <= text.len() as u64 + 1);
        }
    }
}
