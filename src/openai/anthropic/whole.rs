//! A whole Messages API answer as a `chat.completion`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChatUsage, ReportedUsage, chat_id, finish_reason, lenient_usage, malformed, unix_now};
use crate::error::GatewayError;
use crate::openai::Usage;
use crate::openai::sanitize::in_band_error;
use crate::openai::view::ObjectView;

/// A Messages API response body -> a `chat.completion` body (bytes) with the client's model
/// name, and the usage in chat's names for metering. The text blocks, joined, are the
/// message's content (`null` when there is none); each `tool_use` block is a tool call whose
/// arguments are its input as JSON text; other blocks (thinking, server tools) are left out.
pub fn completion_from_message(
    body: &[u8],
    model: &str,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    let view =
        ObjectView::parse(body).map_err(|_| malformed("the response body is not a JSON object"))?;
    if view.error().is_some() {
        return Err(in_band_error(body));
    }
    let message: Message = serde_json::from_slice(body)
        .map_err(|_| malformed("the response body is not a Messages API message"))?;
    let usage = message.usage.map(ReportedUsage::chat);
    let (text, tool_calls) = output_of(&message.content);
    let completion = Completion {
        id: chat_id(&message.id),
        object: "chat.completion",
        created: unix_now(),
        model,
        choices: [Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: Some(text).filter(|text| !text.is_empty()),
                tool_calls,
                refusal: None,
            },
            finish_reason: finish_reason(message.stop_reason.as_deref()),
            logprobs: None,
        }],
        usage: usage.map(ChatUsage::from),
    };
    let bytes = serde_json::to_vec(&completion).expect("invariant: a completion serialises");
    Ok((bytes.into(), usage))
}

/// The answer's text (its text blocks back to back) and its tool calls.
fn output_of(content: &[ContentBlock]) -> (String, Vec<ToolCall<'_>>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        match block {
            ContentBlock::Text { text: part } => text.push_str(part),
            ContentBlock::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                r#type: "function",
                function: Function {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ContentBlock::Other => {}
        }
    }
    (text, calls)
}

/// The parts of a Messages API message that are translated.
#[derive(Debug, Deserialize)]
struct Message {
    id: String,
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<ReportedUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// Thinking, server tools and their results, and any type added later.
    #[serde(other)]
    Other,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
    refusal: Option<()>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    arguments: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn translate(body: &[u8]) -> Result<(Value, Option<Usage>), String> {
        let (bytes, usage) =
            completion_from_message(body, "alias").map_err(|e| e.kind().to_owned())?;
        Ok((
            serde_json::from_slice(&bytes).expect("a JSON completion"),
            usage,
        ))
    }

    fn message(content: Value, stop_reason: &str) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"id": "msg_1", "type": "message", "role": "assistant",
            "model": "claude-up", "content": content, "stop_reason": stop_reason,
            "stop_sequence": null, "usage": {"input_tokens": 9, "output_tokens": 3}}),
        )
        .expect("serialises")
    }

    #[test]
    fn the_golden_message_becomes_a_chat_completion() {
        let golden = std::fs::read(format!(
            "{}/proto/anthropic-message.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("golden exists");
        let (mut completion, usage) = translate(&golden).expect("translates");
        assert!(
            completion["created"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000)
        );
        completion["created"] = json!(0);
        assert_eq!(
            completion,
            json!({
                "id": "chatcmpl-msg_01Aq9w938a90dw8q",
                "object": "chat.completion",
                "created": 0,
                "model": "alias",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Let me check the weather in Paris. ☕",
                        "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                            "function": {"name": "get_weather",
                                "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}],
                        "refusal": null,
                    },
                    "finish_reason": "tool_calls",
                    "logprobs": null,
                }],
                "usage": {"prompt_tokens": 428, "completion_tokens": 58, "total_tokens": 486},
            })
        );
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 428,
                completion_tokens: 58,
                total_tokens: 486
            }),
            "cached prompt tokens are prompt tokens"
        );
    }

    #[test]
    fn text_blocks_join_and_other_blocks_are_left_out() {
        let (completion, _) = translate(&message(
            json!([
                {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
                {"type": "text", "text": "Hel", "citations": []},
                {"type": "text", "text": "lo \r\n\ndata: [DONE]"},
            ]),
            "max_tokens",
        ))
        .expect("translates");
        let choice = &completion["choices"][0];
        assert_eq!(choice["message"]["content"], "Hello \r\n\ndata: [DONE]");
        assert!(
            choice["message"].get("tool_calls").is_none(),
            "only when any"
        );
        assert_eq!(choice["finish_reason"], "length");
        let (completion, _) = translate(&message(json!([]), "refusal")).expect("translates");
        assert!(completion["choices"][0]["message"]["content"].is_null());
        assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn errors_and_malformed_bodies_are_upstream_failures() {
        let rows: [(&[u8], &str); 6] = [
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "upstream_in_band",
            ),
            (b"<html>", "upstream_protocol"),
            (b"[1,2]", "upstream_protocol"),
            (br#"{"id":"msg_1","type":"message"}"#, "upstream_protocol"),
            (
                br#"{"id":"msg_1","content":[{"type":"text","text":5}]}"#,
                "upstream_protocol",
            ),
            (
                br#"{"id":"msg_1","content":[{"type":"tool_use","name":"f","input":{}}]}"#,
                "upstream_protocol",
            ),
        ];
        for (body, kind) in rows {
            assert_eq!(
                translate(body).err().as_deref(),
                Some(kind),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let error = completion_from_message(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "alias",
        )
        .expect_err("an error body");
        assert!(
            matches!(&error, GatewayError::UpstreamInBand { message, request_fault: false } if message == "Overloaded"),
            "{error:?}"
        );
        let (completion, usage) = translate(br#"{"id":"m","content":[]}"#).expect("translates");
        assert_eq!((completion["usage"].clone(), usage), (Value::Null, None));
    }
}
