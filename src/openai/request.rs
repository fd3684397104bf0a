//! `ChatRequest`: the client's JSON body, parsed and validated so a 400 names its `param`.
//!
//! The whole object is kept, so fields the gateway does not know (tools, response_format,
//! logprobs, seed, ...) reach the upstream untouched; the known ones are checked here.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::fields::{check_well_known, missing, wrong_type};
use super::generation::Generation;
use super::tokens::TokenCounter;
use crate::config::{Api, Dialect};
use crate::error::GatewayError;

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Body fields that other gateways read as a destination or a credential. sluicegate never
/// does, and never forwards them either.
pub(super) const DESTINATION_FIELDS: [&str; 3] = ["api_base", "base_url", "api_key"];

/// The largest `max_tokens` / `max_completion_tokens` accepted, as OpenAI bounds them: every
/// reservation built from it fits an `i64` with room to spare.
pub const MAX_OUTPUT_TOKENS: u64 = (1 << 31) - 1;
/// The largest `n` accepted, as OpenAI bounds it.
pub const MAX_CHOICES: u64 = 128;

/// A validated chat completion request.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The larger of `max_tokens` and `max_completion_tokens`, when either is given.
    pub max_output_tokens: Option<u64>,
    /// Number of choices asked for (`n`, default 1).
    pub choices: u64,
    /// The size of the body as the client sent it.
    body_bytes: usize,
    fields: Map<String, Value>,
}

impl ChatRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let fields = object(body)?;
        let model = model(&fields)?;
        messages(&fields)?;
        check_well_known(&fields)?;
        let stream = optional_bool(&fields, "stream")?.unwrap_or(false);
        let include_usage = stream_options(&fields, stream)?;
        let max_tokens = bounded_integer(&fields, "max_tokens", MAX_OUTPUT_TOKENS)?;
        let max_completion_tokens =
            bounded_integer(&fields, "max_completion_tokens", MAX_OUTPUT_TOKENS)?;
        Ok(Self {
            model,
            stream,
            include_usage,
            max_output_tokens: max_tokens.max(max_completion_tokens),
            choices: bounded_integer(&fields, "n", MAX_CHOICES)?.unwrap_or(1),
            body_bytes: body.len(),
            fields,
        })
    }

    /// The body sent upstream: the client's object with `model` replaced, destination fields
    /// removed, the output cap written into `max_tokens` / `max_completion_tokens` (whichever
    /// the client used; `max_tokens` when neither) so the backend cannot exceed what was
    /// reserved, and for streams `stream_options.include_usage` forced on so usage is always
    /// known (the usage chunk is dropped again when the client did not ask for it).
    pub fn upstream_body(&self, upstream_model: &str, output_cap: u64) -> Bytes {
        upstream_body(&self.fields, self.stream, upstream_model, output_cap)
    }
}

impl Generation for ChatRequest {
    const API: Api = Api::Chat;

    fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        Self::parse(body)
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self) -> bool {
        self.stream
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }

    fn max_output_tokens(&self) -> Option<u64> {
        self.max_output_tokens
    }

    fn choices(&self) -> u64 {
        self.choices
    }

    fn prompt_tokens_estimate(&self) -> u64 {
        self.prompt_tokens_estimate()
    }

    fn prompt_tokens_ceiling(&self, estimate: u64) -> u64 {
        self.prompt_tokens_ceiling(estimate)
    }

    fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64 {
        self.prompt_tokens_counted(counter)
    }

    fn upstream_body(&self, upstream_model: &str, output_cap: u64) -> Bytes {
        self.upstream_body(upstream_model, output_cap)
    }

    fn body_for(&self, dialect: &Dialect, upstream_model: &str, output_cap: u64) -> Bytes {
        match dialect {
            Dialect::Anthropic => super::anthropic::messages_body(
                &self.fields,
                upstream_model,
                output_cap,
                self.stream,
            ),
            Dialect::OpenAi | Dialect::Azure { .. } => {
                self.upstream_body(upstream_model, output_cap)
            }
        }
    }

    fn untranslatable(&self) -> Option<GatewayError> {
        super::anthropic::refuse_untranslatable(&self.fields).err()
    }

    fn is_safe_to_duplicate(&self) -> bool {
        self.is_safe_to_duplicate()
    }
}

/// A request object as sent upstream: `model` replaced, destination fields removed, the
/// output cap written into `max_tokens` / `max_completion_tokens` (whichever the client used;
/// `max_tokens` when neither), and for streams `stream_options.include_usage` forced on.
pub(super) fn upstream_body(
    fields: &Map<String, Value>,
    stream: bool,
    upstream_model: &str,
    output_cap: u64,
) -> Bytes {
    let body = UpstreamBody {
        fields,
        stream,
        upstream_model,
        output_cap,
    };
    serde_json::to_vec(&body)
        .expect("invariant: a parsed JSON object serialises")
        .into()
}

impl ChatRequest {
    /// Whether sending this request twice has no effect beyond the cost: not when the client
    /// asked the upstream to store the completion (`store: true`).
    pub fn is_safe_to_duplicate(&self) -> bool {
        self.fields.get("store") != Some(&Value::Bool(true))
    }

    /// A documented estimate of the prompt's tokens, erring high: one token per three bytes of
    /// everything the model reads as text (English averages about four): message content, the
    /// other fields of each message (tool calls, names), and the request's `tools`, `functions`
    /// and `response_format`; `IMAGE_PART_TOKENS` per image; plus four per message and three
    /// for the reply's priming, as OpenAI's own accounting adds.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        estimate_prompt(|visit| self.walk_prompt(visit))
    }

    /// The prompt's tokens counted with the model's tokenizer (for when the upstream reports
    /// none): the same pieces as the estimate, with the same allowances for images and
    /// messages.
    pub fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64 {
        count_prompt(counter, |visit| self.walk_prompt(visit))
    }

    /// Visits everything the model reads as its prompt: message content, the other fields of
    /// each message (tool calls, names), and the request's `tools`, `functions` and
    /// `response_format`. Returns the number of messages.
    fn walk_prompt<'a>(&'a self, mut visit: impl FnMut(PromptPiece<'a>)) -> usize {
        let messages = match self.fields.get("messages") {
            Some(Value::Array(messages)) => messages.as_slice(),
            _ => &[],
        };
        for message in messages {
            walk_message(message, &mut visit);
        }
        for field in PROMPT_FIELDS {
            if let Some(value) = self.fields.get(field).filter(|v| !v.is_null()) {
                visit(PromptPiece::Json(value));
            }
        }
        messages.len()
    }

    /// The most prompt tokens an upstream report is believed for, given the request's
    /// `estimate`: no tokenizer yields more than one token per byte of the request, and images
    /// are allowed three times their estimate.
    pub fn prompt_tokens_ceiling(&self, estimate: u64) -> u64 {
        prompt_ceiling(estimate, self.body_bytes)
    }
}

/// The most prompt tokens an upstream report is believed for: no tokenizer yields more than one
/// token per byte of the request, and images are allowed three times their estimate.
pub(super) fn prompt_ceiling(estimate: u64, body_bytes: usize) -> u64 {
    estimate.saturating_mul(3).max(body_bytes as u64)
}

/// A prompt's tokens estimated erring high from what `walk` visits (it returns the number of
/// messages): one token per three bytes of text or JSON (English averages about four),
/// `IMAGE_PART_TOKENS` per image, and OpenAI's per-message overhead.
pub(super) fn estimate_prompt<'a>(
    walk: impl FnOnce(&mut dyn FnMut(PromptPiece<'a>)) -> usize,
) -> u64 {
    let mut size = PromptSize::default();
    let messages = walk(&mut |piece| size.add(piece));
    size.bytes
        .div_ceil(3)
        .saturating_add(size.images.saturating_mul(IMAGE_PART_TOKENS))
        .saturating_add(overhead(messages))
}

/// A prompt's tokens counted with the model's tokenizer, with the estimate's allowances for
/// images and messages.
pub(super) fn count_prompt<'a>(
    counter: TokenCounter,
    walk: impl FnOnce(&mut dyn FnMut(PromptPiece<'a>)) -> usize,
) -> u64 {
    let mut count = counter.budgeted();
    let mut images = 0u64;
    let messages = walk(&mut |piece| match piece {
        PromptPiece::Text(text) => count.add(text),
        PromptPiece::Json(value) => count.add_json(value),
        PromptPiece::Image => images = images.saturating_add(1),
    });
    count
        .total()
        .saturating_add(images.saturating_mul(IMAGE_PART_TOKENS))
        .saturating_add(overhead(messages))
}

/// Tokens an image part is reserved as: above what one image costs at OpenAI's high detail
/// (at most about 1,450).
const IMAGE_PART_TOKENS: u64 = 1_536;
/// Request fields the model reads as part of its prompt.
const PROMPT_FIELDS: [&str; 3] = ["tools", "functions", "response_format"];

/// An `io::Write` that only counts.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Four tokens per message and three for the reply's priming, as OpenAI's own accounting adds.
fn overhead(messages: usize) -> u64 {
    (messages as u64).saturating_mul(4).saturating_add(3)
}

/// One piece of what the model reads of a request.
pub(super) enum PromptPiece<'a> {
    Text(&'a str),
    /// A structured field, read as its JSON text.
    Json(&'a Value),
    Image,
}

/// Content text is text, image parts are images, other parts (audio, files) and every other
/// field of the message are read as JSON.
pub(super) fn walk_message<'a>(message: &'a Value, visit: &mut impl FnMut(PromptPiece<'a>)) {
    let Value::Object(fields) = message else {
        return;
    };
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("role", _) | (_, Value::Null) => {}
            ("content", Value::String(text)) => visit(PromptPiece::Text(text)),
            ("content", Value::Array(parts)) => {
                for part in parts {
                    match (&part["type"], &part["text"]) {
                        (_, Value::String(text)) => visit(PromptPiece::Text(text)),
                        (Value::String(kind), _)
                            if matches!(kind.as_str(), "image_url" | "image" | "input_image") =>
                        {
                            visit(PromptPiece::Image);
                        }
                        _ => visit(PromptPiece::Json(part)),
                    }
                }
            }
            (_, value) => visit(PromptPiece::Json(value)),
        }
    }
}

/// The size of a prompt: bytes of text (JSON counted as it is written, without a copy) and
/// the number of images.
#[derive(Debug, Default)]
struct PromptSize {
    bytes: u64,
    images: u64,
}

impl PromptSize {
    fn add(&mut self, piece: PromptPiece<'_>) {
        let bytes = match piece {
            PromptPiece::Text(text) => text.len(),
            PromptPiece::Json(value) => {
                let mut counter = ByteCounter(0);
                let _ = serde_json::to_writer(&mut counter, value);
                counter.0
            }
            PromptPiece::Image => {
                self.images = self.images.saturating_add(1);
                0
            }
        };
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }
}

struct UpstreamBody<'a> {
    fields: &'a Map<String, Value>,
    stream: bool,
    upstream_model: &'a str,
    output_cap: u64,
}

impl Serialize for UpstreamBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let fields = self.fields;
        for (key, value) in fields {
            match key.as_str() {
                "model" => map.serialize_entry(key, self.upstream_model)?,
                "max_tokens" | "max_completion_tokens" => {
                    map.serialize_entry(key, &self.output_cap)?
                }
                "stream_options" if self.stream => map.serialize_entry(key, &with_usage(value))?,
                k if DESTINATION_FIELDS.contains(&k) => {}
                _ => map.serialize_entry(key, value)?,
            }
        }
        if !fields.contains_key("max_tokens") && !fields.contains_key("max_completion_tokens") {
            map.serialize_entry("max_tokens", &self.output_cap)?;
        }
        if self.stream && !fields.contains_key("stream_options") {
            map.serialize_entry("stream_options", &with_usage(&Value::Null))?;
        }
        map.end()
    }
}

fn with_usage(stream_options: &Value) -> Value {
    let mut options = match stream_options {
        Value::Object(options) => options.clone(),
        _ => Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    Value::Object(options)
}

/// A request body as a JSON object (UTF-8, well-formed, an object).
pub(super) fn object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| GatewayError::InvalidJson {
        detail: "the body is not valid UTF-8".into(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| GatewayError::InvalidJson {
        detail: e.to_string(),
    })?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(GatewayError::InvalidRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
            code: "invalid_type",
        }),
    }
}

pub(super) fn model(fields: &Map<String, Value>) -> Result<String, GatewayError> {
    match fields.get("model") {
        None | Some(Value::Null) => Err(missing("model")),
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        Some(Value::String(_)) => Err(GatewayError::invalid(
            "model",
            "invalid_value",
            "'model' must not be empty",
        )),
        Some(other) => Err(wrong_type("model", "a string", other)),
    }
}

fn messages(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    let messages = match fields.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(wrong_type("messages", "an array", other)),
    };
    if messages.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "invalid_value",
            "'messages' must contain at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .try_for_each(|(i, m)| message(i, m))
}

fn message(index: usize, message: &Value) -> Result<(), GatewayError> {
    let param = format!("messages[{index}]");
    let Value::Object(message) = message else {
        return Err(wrong_type(&param, "an object", message));
    };
    let role_param = format!("{param}.role");
    let role = match message.get("role") {
        None | Some(Value::Null) => return Err(missing(&role_param)),
        Some(Value::String(role)) => role,
        Some(other) => return Err(wrong_type(&role_param, "a string", other)),
    };
    if !ROLES.contains(&role.as_str()) {
        return Err(GatewayError::invalid(
            &role_param,
            "invalid_value",
            format!(
                "invalid value for '{role_param}': '{role}'; supported values are {}",
                ROLES.join(", ")
            ),
        ));
    }
    match message.get("content") {
        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => Ok(()),
        Some(other) => Err(wrong_type(
            &format!("{param}.content"),
            "a string or an array",
            other,
        )),
    }
}

pub(super) fn optional_bool(
    fields: &Map<String, Value>,
    param: &str,
) -> Result<Option<bool>, GatewayError> {
    match fields.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(param, "a boolean", other)),
    }
}

pub(super) fn stream_options(
    fields: &Map<String, Value>,
    stream: bool,
) -> Result<bool, GatewayError> {
    let options = match fields.get("stream_options") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Object(options)) => options,
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    };
    if !stream {
        return Err(GatewayError::invalid(
            "stream_options",
            "invalid_value",
            "'stream_options' is only allowed when 'stream' is true",
        ));
    }
    optional_bool(options, "include_usage")
        .map(|b| b.unwrap_or(false))
        .map_err(|_| {
            wrong_type(
                "stream_options.include_usage",
                "a boolean",
                &options["include_usage"],
            )
        })
}

/// An optional integer field in `1..=max`. Out-of-range values are refused here, before any
/// arithmetic sees them, with the codes OpenAI uses.
pub(super) fn bounded_integer(
    fields: &Map<String, Value>,
    param: &str,
    max: u64,
) -> Result<Option<u64>, GatewayError> {
    let n = match fields.get(param) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(other) => return Err(wrong_type(param, "an integer", other)),
    };
    if let Some(value) = n.as_u64() {
        return match value {
            0 => Err(below_minimum(param, n)),
            v if v > max => Err(GatewayError::invalid(
                param,
                "integer_above_max_value",
                format!(
                    "invalid '{param}': integer above maximum value; expected a value <= {max}, \
                     but got {n} instead"
                ),
            )),
            v => Ok(Some(v)),
        };
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() != 0.0 => {
            Err(wrong_type(param, "an integer", &Value::Number(n.clone())))
        }
        // A whole number written as a float (`5.0`) is that integer.
        Some(f) if f >= 1.0 && f <= max as f64 => Ok(Some(f as u64)),
        Some(f) if f > 0.0 => Err(GatewayError::invalid(
            param,
            "integer_above_max_value",
            format!("invalid '{param}': expected a value <= {max}, but got {n} instead"),
        )),
        _ => Err(below_minimum(param, n)),
    }
}

fn below_minimum(param: &str, n: &serde_json::Number) -> GatewayError {
    GatewayError::invalid(
        param,
        "integer_below_min_value",
        format!(
            "invalid '{param}': integer below minimum value; expected a value >= 1, but got {n} \
             instead"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> (String, Option<String>) {
        let error = ChatRequest::parse(body.as_bytes()).expect_err("body is invalid");
        (
            error.code().unwrap_or_default().to_owned(),
            error.param().map(str::to_owned),
        )
    }

    #[test]
    fn invalid_bodies_name_their_param() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        let rows: Vec<(String, &str, Option<&str>)> = vec![
            ("{".into(), "invalid_json", None),
            ("[]".into(), "invalid_type", None),
            (
                format!(r#"{{{m}}}"#),
                "missing_required_parameter",
                Some("model"),
            ),
            (
                r#"{"model":"m"}"#.into(),
                "missing_required_parameter",
                Some("messages"),
            ),
            (
                r#"{"model":"m","messages":[]}"#.into(),
                "invalid_value",
                Some("messages"),
            ),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#.into(),
                "missing_required_parameter",
                Some("messages[0].role"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"wizard"}]}"#.into(),
                "invalid_value",
                Some("messages[0].role"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#.into(),
                "invalid_type",
                Some("messages[0].content"),
            ),
            (
                format!(r#"{{"model":"m",{m},"stream":"yes"}}"#),
                "invalid_type",
                Some("stream"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":-1}}"#),
                "integer_below_min_value",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":18446744073709551615}}"#),
                "integer_above_max_value",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_completion_tokens":2147483648}}"#),
                "integer_above_max_value",
                Some("max_completion_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":1e300}}"#),
                "integer_above_max_value",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":-9223372036854775809}}"#),
                "integer_below_min_value",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"n":129}}"#),
                "integer_above_max_value",
                Some("n"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":1.5}}"#),
                "invalid_type",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"max_tokens":"9"}}"#),
                "invalid_type",
                Some("max_tokens"),
            ),
            (
                format!(r#"{{"model":"m",{m},"n":0}}"#),
                "integer_below_min_value",
                Some("n"),
            ),
            (
                format!(r#"{{"model":"m",{m},"stream_options":{{"include_usage":true}}}}"#),
                "invalid_value",
                Some("stream_options"),
            ),
        ];
        for (body, code, param) in rows {
            assert_eq!(
                param_of(&body),
                (code.to_owned(), param.map(str::to_owned)),
                "body {body}"
            );
        }
    }

    #[test]
    fn upstream_body_keeps_unknown_fields_and_forces_usage() {
        let body = r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,
            "tools":[{"type":"function"}],"seed":7,"api_base":"http://evil","stream_options":{"x":1}}"#;
        let request = ChatRequest::parse(body.as_bytes()).expect("valid request");
        assert!(!request.include_usage, "the client did not ask for usage");
        let sent: Value =
            serde_json::from_slice(&request.upstream_body("upstream-m", 77)).expect("JSON");
        assert_eq!(sent["model"], "upstream-m");
        assert_eq!(sent["tools"][0]["type"], "function");
        assert_eq!(sent["seed"], 7);
        assert_eq!(
            sent["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        assert!(
            sent.get("api_base").is_none(),
            "destination fields are never forwarded"
        );
    }

    #[test]
    fn the_prompt_estimate_counts_what_the_model_reads() {
        let estimate = |body: serde_json::Value| {
            let request = ChatRequest::parse(body.to_string().as_bytes()).expect("valid request");
            let estimate = request.prompt_tokens_estimate();
            (estimate, request.prompt_tokens_ceiling(estimate))
        };
        let plain = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(300)}]});
        assert_eq!(
            estimate(plain).0,
            100 + 4 + 3,
            "content at a token per three bytes"
        );
        let tools = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "description": "d".repeat(30_000)}}]});
        let (tools_estimate, tools_ceiling) = estimate(tools);
        assert!(
            tools_estimate > 10_000,
            "tool definitions count: {tools_estimate}"
        );
        assert!(
            tools_ceiling >= 30_000,
            "a byte of request, a token at most: {tools_ceiling}"
        );
        let image = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]});
        assert_eq!(
            estimate(image).0,
            4 + IMAGE_PART_TOKENS + 4 + 3,
            "an image is its allowance"
        );
        let calls = serde_json::json!({"model": "m", "messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
             "function": {"name": "f", "arguments": "a".repeat(3000)}}]}]});
        assert!(estimate(calls).0 > 1_000, "tool calls count");
    }

    #[test]
    fn max_output_tokens_is_the_larger_cap() {
        let body = r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":1,"max_completion_tokens":10000}"#;
        let request = ChatRequest::parse(body.as_bytes()).expect("valid request");
        assert_eq!(request.max_output_tokens, Some(10000));
    }

    #[test]
    fn hostile_json_is_a_clean_error() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            param_of(&deep).0,
            "invalid_json",
            "deep nesting hits the recursion limit"
        );
        assert_eq!(
            param_of(r#"{"model":"\ud800"}"#).0,
            "invalid_json",
            "lone surrogate"
        );
        let error = ChatRequest::parse(b"{\"model\":\"\xff\"}").expect_err("non-UTF-8");
        assert_eq!(error.code(), Some("invalid_json"));
    }

    mod properties {
        use proptest::prelude::*;

        use crate::test_support::cases;
        use serde_json::json;

        use super::*;

        /// Any JSON value, a few levels deep.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: [&str; 12] = [
            "model",
            "messages",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "temperature",
            "stop",
            "tools",
            "logit_bias",
            "seed",
        ];

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = ChatRequest::parse(&bytes);
            }

            #[test]
            fn any_field_values_are_accepted_within_bounds_or_refused_by_name(
                values in prop::collection::vec((prop::sample::select(FIELDS.to_vec()), json_value()), 0..6),
            ) {
                let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
                for (field, value) in values {
                    body[field] = value;
                }
                let bytes = serde_json::to_vec(&body).expect("serialises");
                match ChatRequest::parse(&bytes) {
                    Ok(request) => {
                        prop_assert!(request.max_output_tokens.is_none_or(|n| (1..=MAX_OUTPUT_TOKENS).contains(&n)));
                        prop_assert!((1..=MAX_CHOICES).contains(&request.choices));
                        let _ = request.prompt_tokens_estimate();
                        let sent: Value = serde_json::from_slice(&request.upstream_body("up", 7))
                            .expect("the upstream body is JSON");
                        prop_assert!(sent.is_object());
                    }
                    Err(error) => {
                        prop_assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
                        prop_assert!(error.param().is_some() || error.code() == Some("invalid_json"));
                    }
                }
            }
        }
    }
}
