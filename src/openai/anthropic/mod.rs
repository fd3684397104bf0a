//! Chat completions served by a backend that speaks Anthropic's Messages API: the chat request
//! becomes a Messages body, the Messages answer (whole or streamed) becomes a `chat.completion`
//! or its `chat.completion.chunk` events.
//!
//! Pure translation, no I/O; the transport (`/v1/messages`, `x-api-key`, `anthropic-version`)
//! is the caller's. A request is either translated faithfully or refused up front with its
//! param named ([`refuse_untranslatable`]): nothing the client asked for that changes the
//! answer is silently lost, and everything refused is something the Messages API cannot do.

mod chunks;
mod request;
mod stream;
mod turns;
mod whole;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::openai::Usage;
use crate::openai::fields::{missing, wrong_type};

pub use request::{messages_body, refuse_untranslatable};
pub use stream::MessagesToChunks;
pub use whole::completion_from_message;

/// The `anthropic-version` header value the translation is written for.
pub const API_VERSION: &str = "2023-06-01";

/// The chat `finish_reason` of a Messages `stop_reason`. A turn paused by the API
/// (`pause_turn`), a reason added after this was written, or none at all reads as a normal end.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, a reason added later, or none.
        _ => "stop",
    }
}

/// A completion id as chat clients know them, made from the Messages API's message id.
fn chat_id(message_id: &str) -> String {
    format!("chatcmpl-{message_id}")
}

/// A Messages API `usage` object. Each count is read as leniently as chat's `usage` (clamped,
/// never negative, never failing); a count it does not carry is `None`, so a later report
/// (`message_delta`) replaces only what it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
struct ReportedUsage {
    #[serde(default, deserialize_with = "count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    cache_read_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: Option<u64>,
}

impl ReportedUsage {
    /// The counts of `newer`, and ours where it says nothing.
    fn updated(self, newer: Self) -> Self {
        Self {
            input_tokens: newer.input_tokens.or(self.input_tokens),
            cache_creation_input_tokens: newer
                .cache_creation_input_tokens
                .or(self.cache_creation_input_tokens),
            cache_read_input_tokens: newer
                .cache_read_input_tokens
                .or(self.cache_read_input_tokens),
            output_tokens: newer.output_tokens.or(self.output_tokens),
        }
    }

    /// In chat's names. The Messages API counts cached prompt tokens apart from `input_tokens`;
    /// chat's `prompt_tokens` includes them, so the three are summed.
    fn chat(self) -> Usage {
        let prompt_tokens = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ]
        .into_iter()
        .flatten()
        .fold(0u64, u64::saturating_add);
        let completion_tokens = self.output_tokens.unwrap_or(0);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }
}

/// A `usage` value that is not an object (serde would read a list as one) is no report
/// rather than a failed event.
fn lenient_usage<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ReportedUsage>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if !value.is_object() {
        return Ok(None);
    }
    Ok(ReportedUsage::deserialize(&value).ok())
}

/// One count, read by chat's own `Usage` parser so the two can never disagree on what a
/// negative, fractional, huge or mistyped number means; `null` is no count.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if value.is_null() {
        return Ok(None);
    }
    let read = Usage::deserialize(&json!({ "total_tokens": value }));
    Ok(read.ok().map(|usage| usage.total_tokens))
}

/// A chat `usage` object.
#[derive(Debug, Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for ChatUsage {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// Seconds since the Unix epoch, for `created` (0 on a clock set before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn malformed(detail: &'static str) -> GatewayError {
    GatewayError::UpstreamProtocol { detail }
}

// === request errors ===

/// `value` as an object, or a 400 naming `param`.
fn as_object<'a>(param: &str, value: &'a Value) -> Result<&'a Map<String, Value>, GatewayError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(param, "an object", value))
}

/// `object.key`, present and not `null`, or a 400 naming `param.key`.
fn required<'a>(
    object: &'a Map<String, Value>,
    param: &str,
    key: &str,
) -> Result<&'a Value, GatewayError> {
    object
        .get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| missing(&format!("{param}.{key}")))
}

/// The string `object.key`, or a 400 naming `param.key`.
fn required_string<'a>(
    object: &'a Map<String, Value>,
    param: &str,
    key: &str,
) -> Result<&'a str, GatewayError> {
    match required(object, param, key)? {
        Value::String(value) => Ok(value),
        other => Err(wrong_type(&format!("{param}.{key}"), "a string", other)),
    }
}

/// The 400 for a `type` (of a part, a tool, a call) the Messages API has no equivalent of.
fn unsupported_type(param: &str, value: &str) -> GatewayError {
    GatewayError::invalid(
        param,
        "unsupported_value",
        format!(
            "'{param}': '{value}' is not supported for this model: it is served through the \
             Anthropic Messages API, which has no equivalent"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        let rows = [
            (Some("end_turn"), "stop"),
            (Some("stop_sequence"), "stop"),
            (Some("max_tokens"), "length"),
            (Some("tool_use"), "tool_calls"),
            (Some("refusal"), "content_filter"),
            (Some("pause_turn"), "stop"),
            (Some("model_context_window_exceeded"), "stop"),
            (None, "stop"),
        ];
        for (stop_reason, expected) in rows {
            assert_eq!(finish_reason(stop_reason), expected, "{stop_reason:?}");
        }
    }

    fn reported(json: &str) -> ReportedUsage {
        serde_json::from_str(json).expect("usage always parses from an object")
    }

    #[test]
    fn usage_sums_cached_prompt_tokens_and_reads_counts_leniently() {
        let usage = reported(
            r#"{"input_tokens":12,"cache_creation_input_tokens":3,"cache_read_input_tokens":5,
                "output_tokens":1,"service_tier":"standard"}"#,
        );
        assert_eq!(
            usage.chat(),
            Usage {
                prompt_tokens: 20,
                completion_tokens: 1,
                total_tokens: 21
            }
        );
        let later = usage.updated(reported(r#"{"output_tokens":15}"#));
        assert_eq!(
            (later.chat().prompt_tokens, later.chat().completion_tokens),
            (20, 15),
            "a message_delta replaces only what it reports"
        );
        let hostile = reported(
            r#"{"input_tokens":-5,"cache_creation_input_tokens":1e300,
                "cache_read_input_tokens":18446744073709551615,"output_tokens":"9"}"#,
        );
        let max = crate::openai::request::MAX_OUTPUT_TOKENS;
        assert_eq!(
            hostile.chat(),
            Usage {
                prompt_tokens: 2 * max,
                completion_tokens: 0,
                total_tokens: 2 * max
            },
            "clamped as chat's usage is, never wrapped"
        );
        assert_eq!(reported(r#"{"output_tokens":null}"#).output_tokens, None);
    }
}
