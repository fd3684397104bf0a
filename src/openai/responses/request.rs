//! `ResponsesRequest`: a `POST /v1/responses` body, parsed and validated so a 400 names its
//! `param`. The whole object is kept: fields the gateway does not know reach a backend that
//! serves the Responses API untouched.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::ResponseId;
use super::translate;
use crate::error::GatewayError;
use crate::openai::fields::{check_well_known, missing, wrong_type};
use crate::openai::request::{
    DESTINATION_FIELDS, MAX_OUTPUT_TOKENS, PromptPiece, bounded_integer, count_prompt,
    estimate_prompt, model, object, optional_bool, prompt_ceiling, walk_message,
};
use crate::openai::tokens::TokenCounter;

/// Request fields the model reads as part of its prompt besides `instructions` and `input`.
const PROMPT_FIELDS: [&str; 2] = ["tools", "text"];

/// A validated Responses API request.
#[derive(Debug)]
pub struct ResponsesRequest {
    pub model: String,
    pub stream: bool,
    /// The backend keeps the response (OpenAI's default): it can be read back, continued with
    /// `previous_response_id`, and must not be created twice.
    pub store: bool,
    pub max_output_tokens: Option<u64>,
    /// The stored response this one continues.
    pub previous_response_id: Option<ResponseId>,
    /// The size of the body as the client sent it.
    body_bytes: usize,
    fields: Map<String, Value>,
}

impl ResponsesRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let fields = object(body)?;
        let model = model(&fields)?;
        input(&fields)?;
        match fields.get("instructions") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => return Err(wrong_type("instructions", "a string", other)),
        }
        check_well_known(&fields)?;
        let previous_response_id = match fields.get("previous_response_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(ResponseId::of_param(id, "previous_response_id")?),
            Some(other) => return Err(wrong_type("previous_response_id", "a string", other)),
        };
        refuse_unmeterable(&fields)?;
        Ok(Self {
            model,
            stream: optional_bool(&fields, "stream")?.unwrap_or(false),
            store: optional_bool(&fields, "store")?.unwrap_or(true),
            max_output_tokens: bounded_integer(&fields, "max_output_tokens", MAX_OUTPUT_TOKENS)?,
            previous_response_id,
            body_bytes: body.len(),
            fields,
        })
    }

    /// The client's fields, for translating the request to chat completions.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// Whether a backend that serves only chat completions can answer it: not when it
    /// continues a stored response (only the backend that stored it can), nor when it asks for
    /// what chat completions lack (`translate::refuse_untranslatable` says which).
    pub fn untranslatable(&self) -> Option<GatewayError> {
        if self.previous_response_id.is_some() {
            return Some(GatewayError::invalid(
                "previous_response_id",
                "unsupported_parameter",
                "'previous_response_id' needs a backend that serves the Responses API itself",
            ));
        }
        translate::refuse_untranslatable(&self.fields).err()
    }

    /// The body for a backend that serves the Responses API: `model` replaced, destination
    /// fields removed, and the output cap written into `max_output_tokens` so the backend
    /// cannot exceed what was reserved.
    pub fn upstream_body(&self, upstream_model: &str, output_cap: u64) -> Bytes {
        let body = UpstreamBody {
            fields: &self.fields,
            upstream_model,
            output_cap,
        };
        serde_json::to_vec(&body)
            .expect("invariant: a parsed JSON object serialises")
            .into()
    }

    /// Whether sending it twice costs only the work: not when the backend stores the response
    /// (a second call would leave a second response behind).
    pub fn is_safe_to_duplicate(&self) -> bool {
        !self.store
    }

    /// The prompt this request adds, estimated erring high (as for chat: one token per three
    /// bytes, a fixed allowance per image, OpenAI's per-message overhead). A continued
    /// conversation's earlier turns are not in it; the caller adds what they held.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        estimate_prompt(|visit| self.walk_prompt(visit))
    }

    /// The prompt this request adds, counted with the model's tokenizer.
    pub fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64 {
        count_prompt(counter, |visit| self.walk_prompt(visit))
    }

    /// The most prompt tokens an upstream report is believed for, given the `estimate`.
    pub fn prompt_tokens_ceiling(&self, estimate: u64) -> u64 {
        prompt_ceiling(estimate, self.body_bytes)
    }

    /// Counts the prompt of a kept request body (`None` when it no longer parses).
    pub fn count_prompt(body: &[u8], counter: TokenCounter) -> Option<u64> {
        Self::parse(body)
            .ok()
            .map(|request| request.prompt_tokens_counted(counter))
    }

    /// Visits everything the model reads: `instructions`, the `input` text or items (message
    /// content as text and images, other items as JSON), `tools` and `text`. Returns the
    /// number of messages.
    fn walk_prompt<'a>(&'a self, mut visit: impl FnMut(PromptPiece<'a>)) -> usize {
        let mut messages = 0;
        if let Some(Value::String(instructions)) = self.fields.get("instructions") {
            visit(PromptPiece::Text(instructions));
            messages += 1;
        }
        match self.fields.get("input") {
            Some(Value::String(text)) => {
                visit(PromptPiece::Text(text));
                messages += 1;
            }
            Some(Value::Array(items)) => {
                for item in items {
                    if item.get("role").is_some() {
                        walk_message(item, &mut visit);
                    } else {
                        visit(PromptPiece::Json(item));
                    }
                }
                messages += items.len();
            }
            _ => {}
        }
        for field in PROMPT_FIELDS {
            if let Some(value) = self.fields.get(field).filter(|v| !v.is_null()) {
                visit(PromptPiece::Json(value));
            }
        }
        messages
    }
}

/// Refuses what would generate output the gateway cannot meter: a `background` response (it
/// runs on after the call, its usage never passes the gateway) and a `conversation` (context
/// kept upstream, out of the reservation's sight).
fn refuse_unmeterable(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    if optional_bool(fields, "background")? == Some(true) {
        return Err(GatewayError::invalid(
            "background",
            "unsupported_value",
            "background responses are not supported: their usage could not be metered",
        ));
    }
    match fields.get("conversation") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(GatewayError::invalid(
            "conversation",
            "unsupported_parameter",
            "conversations are not supported; continue a response with 'previous_response_id'",
        )),
    }
}

/// `input`: a string, or a non-empty array of item objects.
fn input(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    let items = match fields.get("input") {
        None | Some(Value::Null) => return Err(missing("input")),
        Some(Value::String(_)) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(wrong_type("input", "a string or an array", other)),
    };
    if items.is_empty() {
        return Err(GatewayError::invalid(
            "input",
            "invalid_value",
            "'input' must contain at least one item",
        ));
    }
    match items.iter().position(|item| !item.is_object()) {
        Some(i) => Err(wrong_type(&format!("input[{i}]"), "an object", &items[i])),
        None => Ok(()),
    }
}

struct UpstreamBody<'a> {
    fields: &'a Map<String, Value>,
    upstream_model: &'a str,
    output_cap: u64,
}

impl Serialize for UpstreamBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.fields {
            match key.as_str() {
                "model" => map.serialize_entry(key, self.upstream_model)?,
                "max_output_tokens" => map.serialize_entry(key, &self.output_cap)?,
                k if DESTINATION_FIELDS.contains(&k) => {}
                _ => map.serialize_entry(key, value)?,
            }
        }
        if !self.fields.contains_key("max_output_tokens") {
            map.serialize_entry("max_output_tokens", &self.output_cap)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> (String, Option<String>) {
        let error = ResponsesRequest::parse(body.as_bytes()).expect_err("body is invalid");
        (
            error.code().unwrap_or_default().to_owned(),
            error.param().map(str::to_owned),
        )
    }

    #[test]
    fn invalid_bodies_name_their_param() {
        let rows = [
            (r#"{"input":"hi"}"#, "missing_required_parameter", "model"),
            (r#"{"model":"m"}"#, "missing_required_parameter", "input"),
            (r#"{"model":"m","input":5}"#, "invalid_type", "input"),
            (r#"{"model":"m","input":[]}"#, "invalid_value", "input"),
            (r#"{"model":"m","input":["x"]}"#, "invalid_type", "input[0]"),
            (
                r#"{"model":"m","input":"x","instructions":1}"#,
                "invalid_type",
                "instructions",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "integer_below_min_value",
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":18446744073709551615}"#,
                "integer_above_max_value",
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"x","store":"yes"}"#,
                "invalid_type",
                "store",
            ),
            (
                r#"{"model":"m","input":"x","previous_response_id":"../admin"}"#,
                "invalid_value",
                "previous_response_id",
            ),
            (
                r#"{"model":"m","input":"x","tools":[1]}"#,
                "invalid_type",
                "tools[0]",
            ),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "unsupported_value",
                "background",
            ),
            (
                r#"{"model":"m","input":"x","conversation":"conv_1"}"#,
                "unsupported_parameter",
                "conversation",
            ),
        ];
        for (body, code, param) in rows {
            assert_eq!(
                refused(body),
                (code.to_owned(), Some(param.to_owned())),
                "{body}"
            );
        }
    }

    #[test]
    fn stored_by_default_and_the_cap_is_written_upstream() {
        let request = ResponsesRequest::parse(
            br#"{"model":"alias","input":"hi","api_key":"sk-x","max_output_tokens":900}"#,
        )
        .expect("valid");
        assert!(request.store && !request.is_safe_to_duplicate());
        let sent: Value = serde_json::from_slice(&request.upstream_body("real", 64)).expect("JSON");
        assert_eq!(sent["model"], "real");
        assert_eq!(sent["max_output_tokens"], 64);
        assert!(sent.get("api_key").is_none(), "destination fields dropped");

        let request =
            ResponsesRequest::parse(br#"{"model":"a","input":"hi","store":false}"#).expect("ok");
        assert!(request.is_safe_to_duplicate());
        let sent: Value = serde_json::from_slice(&request.upstream_body("a", 7)).expect("JSON");
        assert_eq!(sent["max_output_tokens"], 7, "written when absent");
    }

    #[test]
    fn the_estimate_covers_instructions_items_and_tools() {
        let plain = ResponsesRequest::parse(br#"{"model":"m","input":"hello there"}"#)
            .expect("valid")
            .prompt_tokens_estimate();
        let more = ResponsesRequest::parse(
            br#"{"model":"m","instructions":"be brief","input":[
                {"role":"user","content":[{"type":"input_text","text":"hello there"},
                 {"type":"input_image","image_url":"https://x/y.png"}]},
                {"type":"function_call_output","call_id":"c","output":"42"}],
                "tools":[{"type":"function","name":"f"}]}"#,
        )
        .expect("valid")
        .prompt_tokens_estimate();
        assert!(plain >= 4, "{plain}");
        assert!(
            more > plain + 1_536,
            "an image allowance and more text: {more}"
        );
    }
}
