//! Chat messages as Messages API turns: system text lifted out, content as blocks, tool calls
//! and their results as `tool_use` / `tool_result` blocks, and consecutive turns of one role
//! merged, since the Messages API requires user and assistant turns to alternate.
//!
//! [`check_messages`] refuses what has no turn form; [`Conversation::of`] is only called on
//! messages it accepted, so whatever it refused (unknown roles, part types, unreadable
//! arguments) is skipped there rather than checked twice.

use serde_json::{Map, Value, json};

use super::{as_object, required, required_string, unsupported_type};
use crate::error::GatewayError;
use crate::openai::fields::{missing, wrong_type};

/// The message roles the translation reads (`function`, chat's legacy role, is refused).
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// The image types the Messages API reads, as `media_type`s.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// A chat conversation in the Messages API's terms.
#[derive(Debug, Default)]
pub(super) struct Conversation {
    /// The text of each system or developer message, in order.
    pub(super) system: Vec<String>,
    pub(super) turns: Vec<Turn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    User,
    Assistant,
}

/// One message of the Messages API body: never empty.
#[derive(Debug)]
pub(super) struct Turn {
    pub(super) role: Role,
    pub(super) content: Vec<Value>,
}

impl Turn {
    pub(super) fn into_json(self) -> Value {
        let role = match self.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        json!({"role": role, "content": self.content})
    }
}

impl Conversation {
    /// The conversation of chat `messages`: system and developer messages become system text
    /// wherever they stand; user content becomes blocks; assistant text and tool calls become
    /// text and `tool_use` blocks; each tool message a `tool_result` block of a user turn.
    pub(super) fn of(messages: &[Value]) -> Self {
        let mut conversation = Self::default();
        for message in messages {
            let content = &message["content"];
            match message["role"].as_str() {
                Some("system" | "developer") => {
                    let text = plain_text(content);
                    if !is_blank(&text) {
                        conversation.system.push(text);
                    }
                }
                Some("user") => conversation.push(Role::User, content_blocks(content)),
                Some("assistant") => conversation.push(Role::Assistant, assistant_blocks(message)),
                Some("tool") => conversation.push(Role::User, vec![tool_result(message)]),
                // Refused by `refuse_untranslatable`.
                _ => {}
            }
        }
        conversation
    }

    /// Appends `blocks` to the last turn when it has the same role, else starts a turn; a
    /// message with nothing to say makes no turn (the API refuses empty content).
    fn push(&mut self, role: Role, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => self.turns.push(Turn {
                role,
                content: blocks,
            }),
        }
    }
}

/// 400 naming the param for messages that have no Messages API form: the legacy `function`
/// role, content parts other than text and image_url (images only from users and tools),
/// image URLs [`image_source`] cannot read, tool calls that are not functions or whose
/// arguments are not a JSON object, tool messages without a `tool_call_id`; and for a
/// conversation that leaves no user or assistant turn to send.
pub(super) fn check_messages(messages: &[Value]) -> Result<(), GatewayError> {
    for (i, message) in messages.iter().enumerate() {
        check_message(&format!("messages[{i}]"), message)?;
    }
    if Conversation::of(messages).turns.is_empty() {
        return Err(GatewayError::invalid(
            "messages",
            "invalid_value",
            "'messages' must contain a user or assistant message with content",
        ));
    }
    Ok(())
}

/// The Messages API `source` of an image URL: a base64 data URL of a type the API reads, or an
/// https URL (fetched by the API); `None` for anything else.
fn image_source(url: &str) -> Option<Value> {
    if let Some(rest) = strip_prefix_ignoring_case(url, "data:") {
        let (header, data) = rest.split_once(',')?;
        let header = header.to_ascii_lowercase();
        let media_type = header.strip_suffix(";base64")?;
        return IMAGE_TYPES
            .contains(&media_type)
            .then(|| json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    strip_prefix_ignoring_case(url, "https://").map(|_| json!({"type": "url", "url": url}))
}

/// A tool call's `arguments` as the object a `tool_use` block takes for its `input`. Blank
/// arguments (sent by some servers for a call without parameters) are the empty object.
fn tool_input(arguments: &str) -> Option<Map<String, Value>> {
    if is_blank(arguments) {
        return Some(Map::new());
    }
    match serde_json::from_str(arguments) {
        Ok(Value::Object(input)) => Some(input),
        _ => None,
    }
}

/// The URL of an `image_url` part: `{"url": ...}` as OpenAI documents it, or a bare string
/// as some clients send it.
fn image_url(part: &Value) -> Option<&str> {
    let image = &part["image_url"];
    image["url"].as_str().or(image.as_str())
}

/// Text the API would refuse as a block: empty or only whitespace.
fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

fn strip_prefix_ignoring_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let (head, rest) = text.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// System content as one text: a string, or its text parts back to back.
fn plain_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// Message content as blocks: a string is one text block; text and image parts become text
/// and image blocks. Blank text is left out, as the API refuses it.
fn content_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(text) => text_block(text).into_iter().collect(),
        Value::Array(parts) => parts.iter().filter_map(part_block).collect(),
        _ => Vec::new(),
    }
}

fn part_block(part: &Value) -> Option<Value> {
    match part["type"].as_str()? {
        "text" => text_block(part["text"].as_str()?),
        "image_url" => {
            let source = image_source(image_url(part)?)?;
            Some(json!({"type": "image", "source": source}))
        }
        _ => None,
    }
}

fn text_block(text: &str) -> Option<Value> {
    (!is_blank(text)).then(|| json!({"type": "text", "text": text}))
}

/// An assistant message's text, then a `tool_use` block per tool call.
fn assistant_blocks(message: &Value) -> Vec<Value> {
    let mut blocks = content_blocks(&message["content"]);
    let calls = message["tool_calls"].as_array().into_iter().flatten();
    blocks.extend(calls.filter_map(tool_use_block));
    blocks
}

fn tool_use_block(call: &Value) -> Option<Value> {
    let function = &call["function"];
    let input = tool_input(function["arguments"].as_str()?)?;
    Some(json!({
        "type": "tool_use",
        "id": call["id"].as_str()?,
        "name": function["name"].as_str()?,
        "input": input,
    }))
}

/// A tool message as a `tool_result` block: string content kept a string, parts as blocks,
/// no content at all when there is nothing to say (the API takes a result without one).
fn tool_result(message: &Value) -> Value {
    let mut block = json!({"type": "tool_result", "tool_use_id": message["tool_call_id"]});
    let content = match &message["content"] {
        Value::String(text) if !is_blank(text) => Some(Value::String(text.clone())),
        parts @ Value::Array(_) => {
            let blocks = content_blocks(parts);
            (!blocks.is_empty()).then_some(Value::Array(blocks))
        }
        _ => None,
    };
    if let Some(content) = content {
        block["content"] = content;
    }
    block
}

// === checks ===

fn check_message(param: &str, message: &Value) -> Result<(), GatewayError> {
    let message = as_object(param, message)?;
    let role = required_string(message, param, "role")?;
    match role {
        "function" => Err(GatewayError::invalid(
            &format!("{param}.role"),
            "unsupported_value",
            "the legacy 'function' role is not supported for this model: it is served through \
             the Anthropic Messages API; answer tool calls with role 'tool'",
        )),
        role if !ROLES.contains(&role) => Err(GatewayError::invalid(
            &format!("{param}.role"),
            "invalid_value",
            format!("invalid value for '{param}.role': '{role}'"),
        )),
        "assistant" => {
            check_content(param, role, message.get("content"))?;
            check_tool_calls(param, message.get("tool_calls"))
        }
        "tool" => {
            required_string(message, param, "tool_call_id")?;
            check_content(param, role, message.get("content"))
        }
        _ => check_content(param, role, message.get("content")),
    }
}

fn check_content(param: &str, role: &str, content: Option<&Value>) -> Result<(), GatewayError> {
    let param = format!("{param}.content");
    match content {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .try_for_each(|(j, part)| check_part(&format!("{param}[{j}]"), role, part)),
        Some(other) => Err(wrong_type(&param, "a string or an array", other)),
    }
}

/// Text parts anywhere; image parts only where the Messages API takes images (user turns,
/// which tool results are part of).
fn check_part(param: &str, role: &str, part: &Value) -> Result<(), GatewayError> {
    let object = as_object(param, part)?;
    match required_string(object, param, "type")? {
        "text" => required_string(object, param, "text").map(drop),
        "image_url" if matches!(role, "user" | "tool") => {
            let url_param = format!("{param}.image_url.url");
            let url = image_url(part).ok_or_else(|| missing(&url_param))?;
            match image_source(url) {
                Some(_) => Ok(()),
                None => Err(GatewayError::invalid(
                    &url_param,
                    "invalid_value",
                    format!(
                        "'{url_param}' must be an https URL or a base64 data URL of a JPEG, \
                         PNG, GIF or WebP image for this model (the Anthropic Messages API)"
                    ),
                )),
            }
        }
        other => Err(unsupported_type(&format!("{param}.type"), other)),
    }
}

fn check_tool_calls(param: &str, calls: Option<&Value>) -> Result<(), GatewayError> {
    let param = format!("{param}.tool_calls");
    match calls {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .try_for_each(|(j, call)| check_call(&format!("{param}[{j}]"), call)),
        Some(other) => Err(wrong_type(&param, "an array", other)),
    }
}

/// A function call with an id, a name, and arguments that are a JSON object (the Messages API
/// stores a call's input as an object, not as text).
fn check_call(param: &str, call: &Value) -> Result<(), GatewayError> {
    let object = as_object(param, call)?;
    match object.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind == "function" => {}
        Some(Value::String(kind)) => return Err(unsupported_type(&format!("{param}.type"), kind)),
        Some(other) => return Err(wrong_type(&format!("{param}.type"), "a string", other)),
    }
    required_string(object, param, "id")?;
    let function_param = format!("{param}.function");
    let function = as_object(&function_param, required(object, param, "function")?)?;
    required_string(function, &function_param, "name")?;
    let arguments = required_string(function, &function_param, "arguments")?;
    match tool_input(arguments) {
        Some(_) => Ok(()),
        None => {
            let param = format!("{function_param}.arguments");
            Err(GatewayError::invalid(
                &param,
                "invalid_value",
                format!(
                    "'{param}' must be a JSON object for this model (the Anthropic Messages API)"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(messages: Value) -> (Vec<String>, Value) {
        let messages = messages.as_array().expect("a list").clone();
        let conversation = Conversation::of(&messages);
        let turns = conversation
            .turns
            .into_iter()
            .map(Turn::into_json)
            .collect();
        (conversation.system, turns)
    }

    #[test]
    fn system_and_developer_messages_become_system_text_wherever_they_stand() {
        let (system, turns) = turns(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer "},
                {"type": "text", "text": "in French."}]},
            {"role": "system", "content": "  "},
        ]));
        assert_eq!(system, ["Be brief.", "Answer in French."]);
        assert_eq!(
            turns,
            json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
        );
    }

    #[test]
    fn tool_calls_and_results_become_blocks_and_roles_alternate() {
        let call = |id: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": "w", "arguments": arguments}});
        let (_, turns) = turns(json!([
            {"role": "user", "content": "Weather in Paris"},
            {"role": "user", "content": [{"type": "text", "text": "and Rome?"}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                call("toolu_1", "{\"c\":\"Paris\"}"), call("toolu_2", " ")]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": null, "tool_calls": [call("toolu_3", "{}")]},
            {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
            {"role": "assistant", "content": ""},
        ]));
        assert_eq!(
            turns,
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris"},
                    {"type": "text", "text": "and Rome?"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_3", "name": "w", "input": {}},
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
            ])
        );
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let rows = [
            (
                "data:image/png;base64,iVBORw0KGgo=",
                Some(json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})),
            ),
            (
                "DATA:Image/JPEG;BASE64,/9j/4A==",
                Some(json!({"type": "base64", "media_type": "image/jpeg", "data": "/9j/4A=="})),
            ),
            (
                "https://example.com/cat.webp",
                Some(json!({"type": "url", "url": "https://example.com/cat.webp"})),
            ),
            ("http://example.com/cat.png", None),
            ("data:image/svg+xml;base64,PHN2Zz4=", None),
            ("data:image/png,rawbytes", None),
            ("data:image/png;base64", None),
            ("ftp://example.com/a.png", None),
            ("é", None),
        ];
        for (url, source) in rows {
            assert_eq!(image_source(url), source, "{url}");
        }
        let (_, turns) = turns(json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.gif", "detail": "low"}},
            {"type": "image_url", "image_url": "data:image/gif;base64,R0lG"},
        ]}]));
        assert_eq!(
            turns[0]["content"],
            json!([
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.gif"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}},
            ]),
            "detail dropped; a bare string URL read too"
        );
    }

    #[test]
    fn tool_arguments_must_be_an_object_or_blank() {
        let rows = [
            ("{\"a\":1}", Some(json!({"a": 1}))),
            ("", Some(json!({}))),
            ("  \n", Some(json!({}))),
            ("[1]", None),
            ("\"x\"", None),
            ("{", None),
        ];
        for (arguments, input) in rows {
            assert_eq!(
                tool_input(arguments).map(Value::Object),
                input,
                "{arguments:?}"
            );
        }
    }
}
