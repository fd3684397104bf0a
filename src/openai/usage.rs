//! Token counts: what a request reserves, what an upstream reported, and what is charged.
//!
//! Every count that arrives from an upstream is untrusted. Reported usage is read leniently (a
//! negative, fractional, huge or mistyped number never fails the parse and never wraps) and the
//! charge is clamped to what the request could really have used, so a lying or broken backend
//! can neither refund a key's budget nor bury it under a charge of billions.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::time::Instant;

use super::request::MAX_OUTPUT_TOKENS;

/// The largest count read from an upstream report; anything above is taken as this.
const MAX_REPORTED_TOKENS: u64 = MAX_OUTPUT_TOKENS;

/// Token counts as the upstream reported them, each clamped to `0..=MAX_REPORTED_TOKENS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "count")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    pub total_tokens: u64,
}

/// A Responses API `usage` object (`input_tokens`, `output_tokens`), read as leniently.
#[derive(Debug, Deserialize)]
struct ResponsesUsage {
    #[serde(default, deserialize_with = "count")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    output_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    total_tokens: u64,
}

impl Usage {
    /// A Responses API `usage` object (its JSON text) in chat's terms.
    pub fn from_responses(json: &str) -> Option<Self> {
        let usage: ResponsesUsage = serde_json::from_str(json).ok()?;
        Some(Self {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.total_tokens,
        })
    }

    /// The tokens a continuation of the answer carries as context: its prompt and its output.
    pub fn context(&self) -> u64 {
        self.total_tokens
            .max(self.prompt_tokens.saturating_add(self.completion_tokens))
    }
}

/// What a request reserved, and the most of it an upstream report is believed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The prompt estimate, the output cap for every choice, and their sum.
    pub usage: Usage,
    /// The most prompt tokens the request can have used (`ChatRequest::prompt_tokens_ceiling`).
    pub prompt_ceiling: u64,
}

impl Reservation {
    /// The prompt estimate plus `output_cap` for each of `choices`. Saturating, though
    /// validated inputs (`output_cap` and `choices` bounded at parse time) stay far below
    /// `u64::MAX`.
    pub fn new(prompt_estimate: u64, prompt_ceiling: u64, output_cap: u64, choices: u64) -> Self {
        let completion = output_cap.saturating_mul(choices);
        Self {
            usage: Usage {
                prompt_tokens: prompt_estimate,
                completion_tokens: completion,
                total_tokens: prompt_estimate.saturating_add(completion),
            },
            prompt_ceiling: prompt_ceiling.max(prompt_estimate),
        }
    }
}

/// What a response generated, as far as the gateway can tell: the upstream's usage report and
/// the number of chunks that carried choices (the fallback when no usage arrived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metering {
    pub usage: Option<Usage>,
    pub chunks: u64,
    /// `usage` is the upstream's report.
    pub reported: bool,
    /// Without a report: the completion tokens the gateway counted with the model's tokenizer.
    pub counted_completion: Option<u64>,
    /// Without a report: the prompt tokens counted with the model's tokenizer.
    pub counted_prompt: Option<u64>,
    /// When the first and the latest chunk with choices went to the client.
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

impl Metering {
    /// Tokens to charge for a request that reserved `reserved`: the reported usage, else what
    /// the gateway counted (the prompt estimate standing in for an uncounted prompt, a token a
    /// chunk for an uncounted answer), else (nothing was generated) none. Whatever the upstream
    /// claimed, the prompt part is at most the reservation's prompt ceiling and the completion
    /// part at most the output reserved (the upstream was told that cap), and at least a token
    /// for each chunk it sent.
    pub fn used_tokens(&self, reserved: &Reservation) -> u64 {
        let prompt_ceiling = reserved.prompt_ceiling;
        let completion_ceiling = reserved.usage.completion_tokens;
        let ceiling = prompt_ceiling.saturating_add(completion_ceiling);
        let streamed = self.chunks.min(completion_ceiling);
        match self.usage {
            Some(usage) => {
                let parts = usage.prompt_tokens.min(prompt_ceiling).saturating_add(
                    usage
                        .completion_tokens
                        .max(streamed)
                        .min(completion_ceiling),
                );
                usage.total_tokens.max(parts).min(ceiling)
            }
            None if self.chunks == 0 && self.counted_completion.is_none() => 0,
            None => self
                .counted_prompt
                .unwrap_or(reserved.usage.prompt_tokens)
                .min(prompt_ceiling)
                .saturating_add(
                    self.counted_completion
                        .unwrap_or(0)
                        .max(streamed)
                        .min(completion_ceiling),
                ),
        }
    }

    /// The usage to account: the report, else the gateway's own counts, else none; with the
    /// request's reservation, held under the ceilings the charge is (so a lying upstream cannot
    /// inflate a key's totals either).
    pub fn accounted(&self, reserved: Option<&Reservation>) -> Option<(Usage, UsageSource)> {
        let (prompt, completion, source) = match (self.usage, self.reported) {
            (Some(usage), true) => (
                usage.prompt_tokens,
                usage.completion_tokens,
                UsageSource::Upstream,
            ),
            _ if self.counted_completion.is_none() && self.counted_prompt.is_none() => {
                return None;
            }
            _ => (
                self.counted_prompt.unwrap_or(0),
                self.counted_completion.unwrap_or(0),
                UsageSource::Tokenizer,
            ),
        };
        let (prompt, completion) = match reserved {
            Some(reserved) => (
                prompt.min(reserved.prompt_ceiling),
                completion.min(reserved.usage.completion_tokens),
            ),
            None => (prompt, completion),
        };
        let usage = Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
        };
        Some((usage, source))
    }
}

/// Where a request's token counts came from, as the access log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream's `usage` report.
    Upstream,
    /// The gateway's count with the model's tokenizer.
    Tokenizer,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Tokenizer => "tokenizer",
        }
    }
}

/// Reads one reported count without ever failing: integers are clamped to
/// `0..=MAX_REPORTED_TOKENS`, fractions rounded up, anything else (strings, `null`, NaN) is 0.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let Value::Number(n) = value else {
        return Ok(0);
    };
    let clamped = if let Some(v) = n.as_u64() {
        v.min(MAX_REPORTED_TOKENS)
    } else if n.is_i64() {
        0
    } else {
        match n.as_f64() {
            Some(f) if f > 0.0 => f.ceil().min(MAX_REPORTED_TOKENS as f64) as u64,
            _ => 0,
        }
    };
    Ok(clamped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_usage_reads_its_own_names_and_chat_usage_is_untouched_by_them() {
        let usage = Usage::from_responses(
            r#"{"input_tokens":21,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,"total_tokens":30}"#,
        );
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 21,
                completion_tokens: 9,
                total_tokens: 30
            })
        );
        assert_eq!(usage.map(|u| u.context()), Some(30));
        let both: Usage = serde_json::from_str(
            r#"{"prompt_tokens":5,"input_tokens":5,"completion_tokens":1,"total_tokens":6}"#,
        )
        .expect("chat usage with extra names still parses");
        assert_eq!(both.total_tokens, 6);
        let missing_total =
            Usage::from_responses(r#"{"input_tokens":4,"output_tokens":3}"#).expect("parses");
        assert_eq!(
            missing_total.context(),
            7,
            "the parts when the total is missing"
        );
    }

    fn usage_of(json: &str) -> Usage {
        serde_json::from_str(json).expect("usage always parses from an object")
    }

    #[test]
    fn reported_counts_are_read_leniently_and_clamped() {
        let rows = [
            (
                r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#,
                (3, 4, 7),
            ),
            (r#"{"prompt_tokens":-5,"completion_tokens":4}"#, (0, 4, 0)),
            (
                r#"{"prompt_tokens":2.2,"completion_tokens":"9"}"#,
                (3, 0, 0),
            ),
            (
                r#"{"prompt_tokens":18446744073709551615,"total_tokens":1e300}"#,
                (MAX_REPORTED_TOKENS, 0, MAX_REPORTED_TOKENS),
            ),
            (
                r#"{"prompt_tokens":-1e300,"completion_tokens":null}"#,
                (0, 0, 0),
            ),
            (r#"{}"#, (0, 0, 0)),
        ];
        for (json, (prompt, completion, total)) in rows {
            assert_eq!(
                usage_of(json),
                Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: total
                },
                "{json}"
            );
        }
    }

    #[test]
    fn the_charge_is_bounded_by_what_the_request_could_use() {
        let reserved = Reservation::new(10, 30, 100, 2);
        assert_eq!(reserved.usage.total_tokens, 210);
        let metered = |usage: Option<Usage>, chunks| {
            Metering {
                usage,
                chunks,
                reported: true,
                ..Metering::default()
            }
            .used_tokens(&reserved)
        };
        let report = |prompt_tokens, completion_tokens, total_tokens| {
            Some(Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens,
            })
        };
        assert_eq!(metered(report(8, 50, 58), 0), 58, "an honest report");
        assert_eq!(metered(report(8, 50, 0), 0), 58, "total missing");
        assert_eq!(
            metered(report(u64::MAX, u64::MAX, u64::MAX), 0),
            30 + 200,
            "a huge report is held to the prompt ceiling plus the output reserved"
        );
        assert_eq!(
            metered(report(8, 0, 8), 40),
            48,
            "a report of no output is not believed over the 40 chunks sent"
        );
        assert_eq!(metered(None, 0), 0, "nothing generated");
        assert_eq!(
            metered(None, 5),
            15,
            "no report: prompt plus a token a chunk"
        );
        assert_eq!(
            metered(None, u64::MAX),
            210,
            "chunks beyond the output reserved"
        );
        assert_eq!(
            Reservation::new(u64::MAX, 0, u64::MAX, 128)
                .usage
                .total_tokens,
            u64::MAX,
            "saturates, never wraps"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use crate::test_support::cases;

        use super::*;

        proptest! {
            #![proptest_config(cases(512))]

            #[test]
            fn any_reported_numbers_are_charged_within_the_ceiling(
                counts in prop::collection::vec(
                    prop_oneof![
                        any::<i64>().prop_map(|n| n.to_string()),
                        any::<u64>().prop_map(|n| n.to_string()),
                        any::<f64>().prop_map(|n| if n.is_finite() { n.to_string() } else { "null".into() }),
                        Just("\"7\"".to_owned()),
                    ],
                    3,
                ),
                prompt in 0u64..1_000_000,
                cap in 1u64..=(1 << 31) - 1,
                choices in 1u64..=128,
                chunks in any::<u64>(),
            ) {
                let json = format!(
                    r#"{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}"#,
                    counts[0], counts[1], counts[2]
                );
                let usage: Usage = serde_json::from_str(&json).expect("usage always parses");
                let reserved = Reservation::new(prompt, prompt * 3, cap, choices);
                let ceiling = prompt * 3 + cap * choices;
                for metering in [
                    Metering { usage: Some(usage), chunks, reported: true, ..Metering::default() },
                    Metering { usage: None, chunks, ..Metering::default() },
                ] {
                    prop_assert!(metering.used_tokens(&reserved) <= ceiling);
                }
            }
        }
    }
}
