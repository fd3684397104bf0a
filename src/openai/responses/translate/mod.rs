//! The Responses API served by a chat completions backend: the request becomes a chat body,
//! the chat answer (whole or streamed) becomes a Responses object or its typed events.
//!
//! Pure translation, no I/O. The gateway keeps no state between requests, so every translated
//! response says `store: false`, and what would need stored state (`previous_response_id`,
//! `conversation`, `background`) is refused up front, as is every tool or input the chat API
//! cannot express: a request is either translated faithfully or refused with its param named.

mod events;
mod request;
mod stream;
mod whole;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::openai::Usage;

pub use request::{chat_body, refuse_untranslatable};
pub use stream::ChatToResponses;
pub use whole::response_from_completion;

/// The request fields a response object repeats (instructions, max_output_tokens = the cap,
/// temperature, top_p, tools as the client sent them, tool_choice, text, parallel_tool_calls,
/// metadata, user, reasoning...): a Responses client reads its settings back from every
/// response object, with OpenAI's defaults where it sent none.
#[derive(Debug, Clone)]
pub struct Echo {
    instructions: Value,
    /// The output cap the backend was told, which may be lower than the client asked for.
    max_output_tokens: u64,
    max_tool_calls: Value,
    parallel_tool_calls: Value,
    prompt_cache_key: Value,
    reasoning: Value,
    safety_identifier: Value,
    temperature: Value,
    text: Value,
    tool_choice: Value,
    tools: Value,
    top_logprobs: Value,
    top_p: Value,
    truncation: Value,
    user: Value,
    metadata: Value,
}

impl Echo {
    /// Takes each repeated field from the client's request `fields`, OpenAI's default when it
    /// is absent or `null`; `output_cap` is the cap actually sent upstream.
    pub fn new(fields: &Map<String, Value>, output_cap: u64) -> Self {
        let echo = |name: &str, default: Value| match fields.get(name) {
            None | Some(Value::Null) => default,
            Some(value) => value.clone(),
        };
        Self {
            instructions: echo("instructions", Value::Null),
            max_output_tokens: output_cap,
            max_tool_calls: echo("max_tool_calls", Value::Null),
            parallel_tool_calls: echo("parallel_tool_calls", json!(true)),
            prompt_cache_key: echo("prompt_cache_key", Value::Null),
            reasoning: echo("reasoning", json!({"effort": null, "summary": null})),
            safety_identifier: echo("safety_identifier", Value::Null),
            temperature: echo("temperature", json!(1.0)),
            text: echo(
                "text",
                json!({"format": {"type": "text"}, "verbosity": "medium"}),
            ),
            tool_choice: echo("tool_choice", json!("auto")),
            tools: echo("tools", json!([])),
            top_logprobs: echo("top_logprobs", json!(0)),
            top_p: echo("top_p", json!(1.0)),
            truncation: echo("truncation", json!("disabled")),
            user: echo("user", Value::Null),
            metadata: echo("metadata", json!({})),
        }
    }
}

/// How an answer ended, from the chat `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    /// Cut short; the reason as `incomplete_details.reason` says it.
    Incomplete(&'static str),
}

impl Ending {
    /// `length` and `content_filter` cut the answer short; any other reason (`stop`,
    /// `tool_calls`, none at all) means it is whole.
    fn from_finish_reason(reason: Option<&str>) -> Self {
        match reason {
            Some("length") => Self::Incomplete("max_output_tokens"),
            Some("content_filter") => Self::Incomplete("content_filter"),
            _ => Self::Completed,
        }
    }

    fn status(self) -> Status {
        match self {
            Self::Completed => Status::Completed,
            Self::Incomplete(_) => Status::Incomplete,
        }
    }

    /// The status of a finished output item: only the last one can have been cut short.
    fn item_status(self, is_last: bool) -> Status {
        if is_last {
            self.status()
        } else {
            Status::Completed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    InProgress,
    Completed,
    Incomplete,
}

/// An assistant message output item: one `output_text` part.
#[derive(Debug)]
struct Message {
    id: String,
    text: String,
}

/// A `function_call` output item.
#[derive(Debug)]
struct FunctionCall {
    id: String,
    /// The chat tool call's id, which the client's `function_call_output` answers.
    call_id: String,
    name: String,
    arguments: String,
}

/// An output item as the response lists it.
#[derive(Debug, Clone, Copy)]
enum OutputItem<'a> {
    Message(&'a Message),
    Call(&'a FunctionCall),
}

impl<'a> OutputItem<'a> {
    /// The item's JSON; an item in progress is written as it was announced, with no content
    /// and no arguments yet.
    fn json(self, status: Status) -> ItemJson<'a> {
        let done = status != Status::InProgress;
        match self {
            Self::Message(message) => ItemJson::Message {
                id: &message.id,
                r#type: "message",
                status,
                content: done.then(|| TextPart::new(&message.text)),
                role: "assistant",
            },
            Self::Call(call) => ItemJson::Call {
                id: &call.id,
                r#type: "function_call",
                status,
                arguments: if done { &call.arguments } else { "" },
                call_id: &call.call_id,
                name: &call.name,
            },
        }
    }
}

/// The items of a finished response, in output order, each with its status.
fn finished_output(items: Vec<OutputItem<'_>>, ending: Ending) -> Vec<ItemJson<'_>> {
    let last = items.len().saturating_sub(1);
    items
        .into_iter()
        .enumerate()
        .map(|(k, item)| item.json(ending.item_status(k == last)))
        .collect()
}

#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum ItemJson<'a> {
    Message {
        id: &'a str,
        r#type: &'static str,
        status: Status,
        /// Written as a list: empty while in progress, the one text part when done.
        #[serde(serialize_with = "as_list")]
        content: Option<TextPart<'a>>,
        role: &'static str,
    },
    Call {
        id: &'a str,
        r#type: &'static str,
        status: Status,
        arguments: &'a str,
        call_id: &'a str,
        name: &'a str,
    },
}

fn as_list<S: Serializer, T: Serialize>(
    item: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(item)
}

/// An `output_text` content part. The chat answer carries no annotations and the gateway does
/// not translate logprobs, so both lists are always empty.
#[derive(Debug, serde::Serialize)]
struct TextPart<'a> {
    r#type: &'static str,
    annotations: [(); 0],
    logprobs: [(); 0],
    text: &'a str,
}

impl<'a> TextPart<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            r#type: "output_text",
            annotations: [],
            logprobs: [],
            text,
        }
    }
}

/// Token counts in the Responses API's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

/// A chat `usage` object read leniently (as metering reads it), and in Responses names; `None`
/// when it is not an object. A detail count is at most the count it details.
fn reported_usage(raw: &Value) -> Option<(Usage, ResponseUsage)> {
    let usage = Usage::deserialize(raw).ok()?;
    let detail = |pointer: &str, of: u64| {
        raw.pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(of)
    };
    let mapped = ResponseUsage {
        input_tokens: usage.prompt_tokens,
        input_tokens_details: CachedTokens {
            cached_tokens: detail("/prompt_tokens_details/cached_tokens", usage.prompt_tokens),
        },
        output_tokens: usage.completion_tokens,
        output_tokens_details: ReasoningTokens {
            reasoning_tokens: detail(
                "/completion_tokens_details/reasoning_tokens",
                usage.completion_tokens,
            ),
        },
        total_tokens: usage
            .total_tokens
            .max(usage.prompt_tokens.saturating_add(usage.completion_tokens)),
    };
    Some((usage, mapped))
}

/// A chat tool call, whole (in a completion's message) or a fragment of one (in a stream
/// delta, where `index` says which call it continues).
#[derive(Debug, Deserialize)]
struct ChatToolCall {
    index: Option<u64>,
    id: Option<String>,
    function: Option<ChatFunction>,
}

#[derive(Debug, Deserialize)]
struct ChatFunction {
    name: Option<String>,
    arguments: Option<String>,
}

impl ChatToolCall {
    /// The upstream's call id; an empty one counts as none.
    fn id(&self) -> Option<&str> {
        self.id.as_deref().filter(|id| !id.is_empty())
    }

    fn name(&self) -> Option<&str> {
        self.function.as_ref()?.name.as_deref()
    }

    fn arguments(&self) -> Option<&str> {
        self.function.as_ref()?.arguments.as_deref()
    }
}

/// A response object in the order OpenAI writes its fields. `ending` is `None` while the
/// answer is being generated.
#[derive(Debug)]
struct ResponseObject<'a> {
    id: &'a str,
    created_at: u64,
    model: &'a str,
    echo: &'a Echo,
    ending: Option<Ending>,
    output: Vec<ItemJson<'a>>,
    usage: Option<&'a ResponseUsage>,
}

#[derive(Debug, serde::Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

impl Serialize for ResponseObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let echo = self.echo;
        let status = self.ending.map_or(Status::InProgress, Ending::status);
        let incomplete = match self.ending {
            Some(Ending::Incomplete(reason)) => Some(IncompleteDetails { reason }),
            Some(Ending::Completed) | None => None,
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("object", "response")?;
        map.serialize_entry("created_at", &self.created_at)?;
        map.serialize_entry("status", &status)?;
        map.serialize_entry("background", &false)?;
        map.serialize_entry("error", &())?;
        map.serialize_entry("incomplete_details", &incomplete)?;
        map.serialize_entry("instructions", &echo.instructions)?;
        map.serialize_entry("max_output_tokens", &echo.max_output_tokens)?;
        map.serialize_entry("max_tool_calls", &echo.max_tool_calls)?;
        map.serialize_entry("model", self.model)?;
        map.serialize_entry("output", &self.output)?;
        map.serialize_entry("parallel_tool_calls", &echo.parallel_tool_calls)?;
        map.serialize_entry("previous_response_id", &())?;
        map.serialize_entry("prompt_cache_key", &echo.prompt_cache_key)?;
        map.serialize_entry("reasoning", &echo.reasoning)?;
        map.serialize_entry("safety_identifier", &echo.safety_identifier)?;
        map.serialize_entry("service_tier", "default")?;
        map.serialize_entry("store", &false)?;
        map.serialize_entry("temperature", &echo.temperature)?;
        map.serialize_entry("text", &echo.text)?;
        map.serialize_entry("tool_choice", &echo.tool_choice)?;
        map.serialize_entry("tools", &echo.tools)?;
        map.serialize_entry("top_logprobs", &echo.top_logprobs)?;
        map.serialize_entry("top_p", &echo.top_p)?;
        map.serialize_entry("truncation", &echo.truncation)?;
        map.serialize_entry("usage", &self.usage)?;
        map.serialize_entry("user", &echo.user)?;
        map.serialize_entry("metadata", &echo.metadata)?;
        map.end()
    }
}

/// A fresh id for a response (`resp`), an output item (`msg`, `fc`) or a tool call the
/// upstream left unnamed (`call`): the prefix and 48 random hex digits, as OpenAI's look.
fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// Seconds since the Unix epoch, for `created_at` (0 on a clock set before 1970).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn malformed(detail: &'static str) -> GatewayError {
    GatewayError::UpstreamProtocol { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_repeats_what_the_client_sent_and_defaults_the_rest() {
        let fields: Map<String, Value> = serde_json::from_value(json!({
            "model": "m", "input": "hi", "instructions": "Be brief.", "temperature": 0.2,
            "tools": [{"type": "function", "name": "f"}], "user": "u-1", "top_p": null,
            "max_output_tokens": 1000,
        }))
        .expect("an object");
        let echo = Echo::new(&fields, 64);
        assert_eq!(echo.instructions, "Be brief.");
        assert_eq!(echo.max_output_tokens, 64, "the cap actually sent upstream");
        assert_eq!(echo.temperature, 0.2);
        assert_eq!(echo.top_p, 1.0, "null is OpenAI's default");
        assert_eq!(echo.tools, json!([{"type": "function", "name": "f"}]));
        assert_eq!(echo.tool_choice, "auto");
        assert_eq!(echo.metadata, json!({}));
    }

    #[test]
    fn usage_is_renamed_and_details_are_bounded_by_their_counts() {
        let raw = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 99}});
        let (usage, mapped) = reported_usage(&raw).expect("an object");
        assert_eq!(usage.total_tokens, 15);
        assert_eq!(
            serde_json::to_value(mapped).expect("serialises"),
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
                "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 5},
                "total_tokens": 15})
        );
        let (_, bare) = reported_usage(&json!({"prompt_tokens": 2, "completion_tokens": 3}))
            .expect("an object");
        assert_eq!(
            (bare.input_tokens_details.cached_tokens, bare.total_tokens),
            (0, 5)
        );
        assert_eq!(reported_usage(&json!(7)), None);
    }

    #[test]
    fn finish_reasons_map_to_endings() {
        let rows = [
            (Some("stop"), Ending::Completed),
            (Some("tool_calls"), Ending::Completed),
            (None, Ending::Completed),
            (Some("length"), Ending::Incomplete("max_output_tokens")),
            (Some("content_filter"), Ending::Incomplete("content_filter")),
        ];
        for (reason, ending) in rows {
            assert_eq!(Ending::from_finish_reason(reason), ending, "{reason:?}");
        }
    }
}
