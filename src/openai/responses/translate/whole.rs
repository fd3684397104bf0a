//! A whole `chat.completion` answer as a Responses `response` object.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::{
    ChatToolCall, Echo, Ending, FunctionCall, Message, OutputItem, ResponseObject, finished_output,
    malformed, new_id, reported_usage, unix_now,
};
use crate::error::GatewayError;
use crate::openai::Usage;
use crate::openai::sanitize::in_band_error;
use crate::openai::view::ObjectView;

/// A chat.completion body -> a Responses `response` object (bytes), and the upstream's usage
/// (chat names) for metering. The object is `completed`, or `incomplete` when the first
/// choice's finish reason cut it short; its output is the assistant message (when it has
/// text) and then one `function_call` item per tool call. `model` is the client-facing name.
pub fn response_from_completion(
    body: &[u8],
    model: &str,
    echo: &Echo,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    let view =
        ObjectView::parse(body).map_err(|_| malformed("the response body is not a JSON object"))?;
    if let Some(error) = view.error() {
        return Err(in_band_error(error.as_bytes()));
    }
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|_| malformed("the response body is not a chat completion"))?;
    // Only the first choice: the backend is asked for one.
    let choice = completion
        .choices
        .into_iter()
        .flatten()
        .find(|c| c.index.unwrap_or(0) == 0);
    let ending =
        Ending::from_finish_reason(choice.as_ref().and_then(|c| c.finish_reason.as_deref()));
    let (message, calls) = output_of(choice.and_then(|c| c.message));
    let items = message
        .iter()
        .map(OutputItem::Message)
        .chain(calls.iter().map(OutputItem::Call))
        .collect();
    let usage = completion.usage.as_ref().and_then(reported_usage);
    let id = new_id("resp");
    let response = ResponseObject {
        id: &id,
        created_at: unix_now(),
        model,
        echo,
        ending: Some(ending),
        output: finished_output(items, ending),
        usage: usage.as_ref().map(|(_, mapped)| mapped),
    };
    let bytes = serde_json::to_vec(&response).expect("invariant: a response serialises");
    Ok((bytes.into(), usage.map(|(usage, _)| usage)))
}

/// The output items of the assistant's message.
fn output_of(message: Option<ChatMessage>) -> (Option<Message>, Vec<FunctionCall>) {
    let Some(message) = message else {
        return (None, Vec::new());
    };
    let text = message
        .content
        .filter(|text| !text.is_empty())
        .map(|text| Message {
            id: new_id("msg"),
            text,
        });
    let calls = message
        .tool_calls
        .into_iter()
        .flatten()
        .map(|call| FunctionCall {
            id: new_id("fc"),
            call_id: call.id().map_or_else(|| new_id("call"), str::to_owned),
            name: call.name().unwrap_or_default().to_owned(),
            arguments: call.arguments().unwrap_or_default().to_owned(),
        })
        .collect();
    (text, calls)
}

/// The parts of a `chat.completion` that are translated.
#[derive(Debug, Deserialize)]
struct Completion {
    choices: Option<Vec<Choice>>,
    usage: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    index: Option<u64>,
    message: Option<ChatMessage>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    content: Option<String>,
    tool_calls: Option<Vec<ChatToolCall>>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn echo() -> Echo {
        let fields: Map<String, Value> =
            serde_json::from_value(json!({"model": "alias", "input": "hi"})).expect("object");
        Echo::new(&fields, 64)
    }

    fn translate(completion: Value) -> Result<(Value, Option<Usage>), String> {
        let body = serde_json::to_vec(&completion).expect("serialises");
        let (bytes, usage) =
            response_from_completion(&body, "alias", &echo()).map_err(|e| e.kind().to_owned())?;
        Ok((
            serde_json::from_slice(&bytes).expect("a JSON response"),
            usage,
        ))
    }

    fn completion(message: Value, finish_reason: &str) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 8}}})
    }

    #[test]
    fn a_text_answer_becomes_a_completed_message() {
        let (response, usage) = translate(completion(
            json!({"role": "assistant", "content": "Hi there! \r\n\ndata: [DONE]", "refusal": null}),
            "stop",
        ))
        .expect("translates");
        assert_eq!(
            usage.map(|u| u.total_tokens),
            Some(12),
            "chat names for metering"
        );
        assert!(
            response["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("resp_"))
        );
        assert_eq!(response["object"], "response");
        assert_eq!(response["model"], "alias");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["store"], false);
        assert_eq!(response["max_output_tokens"], 64);
        assert!(response["incomplete_details"].is_null());
        let output = &response["output"];
        assert_eq!(output.as_array().map(Vec::len), Some(1));
        assert!(
            output[0]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("msg_"))
        );
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[0]["status"], "completed");
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(
            output[0]["content"],
            json!([{"type": "output_text", "annotations": [], "logprobs": [],
                "text": "Hi there! \r\n\ndata: [DONE]"}])
        );
        assert_eq!(
            response["usage"],
            json!({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 8},
                "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 12})
        );
    }

    #[test]
    fn tool_calls_become_function_call_items_after_the_text() {
        let (response, _) = translate(completion(
            json!({"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            ]}),
            "tool_calls",
        ))
        .expect("translates");
        let output = response["output"].as_array().expect("a list");
        let kinds: Vec<&str> = output
            .iter()
            .filter_map(|item| item["type"].as_str())
            .collect();
        assert_eq!(kinds, ["message", "function_call", "function_call"]);
        let call = &output[1];
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("fc_")));
        assert_eq!(
            (
                &call["call_id"],
                &call["name"],
                &call["arguments"],
                &call["status"]
            ),
            (
                &json!("call_1"),
                &json!("w"),
                &json!("{\"c\":\"Paris\"}"),
                &json!("completed")
            )
        );
        assert_eq!(output[2]["call_id"], "call_2");
        let (response, _) = translate(completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": "{}"}}]}),
            "tool_calls",
        ))
        .expect("translates");
        assert_eq!(
            response["output"][0]["type"], "function_call",
            "no empty message"
        );
        assert!(
            response["output"][0]["call_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("call_")),
            "a call the upstream left unnamed gets an id to answer"
        );
    }

    #[test]
    fn a_cut_short_answer_is_incomplete() {
        let (response, _) =
            translate(completion(json!({"content": "Hel"}), "length")).expect("translates");
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        let (response, _) =
            translate(completion(json!({"content": ""}), "content_filter")).expect("translates");
        assert_eq!(
            response["incomplete_details"],
            json!({"reason": "content_filter"})
        );
        assert_eq!(response["output"], json!([]));
    }

    #[test]
    fn errors_and_malformed_bodies_are_upstream_failures() {
        let rows = [
            (
                json!({"error": {"message": "boom", "type": "server_error"}}),
                "upstream_in_band",
            ),
            (
                json!({"choices": [{"message": {"content": 5}}]}),
                "upstream_protocol",
            ),
            (json!([1, 2]), "upstream_protocol"),
        ];
        for (body, kind) in rows {
            assert_eq!(
                translate(body.clone()).err().as_deref(),
                Some(kind),
                "{body}"
            );
        }
        let not_json = response_from_completion(b"<html>", "alias", &echo());
        assert_eq!(not_json.err().map(|e| e.kind()), Some("upstream_protocol"));
        let (response, usage) =
            translate(json!({"choices": []})).expect("an empty answer translates");
        assert_eq!((response["output"].clone(), usage), (json!([]), None));
        assert!(response["usage"].is_null());
    }
}
