//! A Responses request as a chat completions body, and the refusal of what has no chat form.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::openai::fields::{missing, wrong_type};

/// The message roles a Responses input message may have, all of which chat knows too.
const ROLES: [&str; 4] = ["user", "assistant", "system", "developer"];

/// 400 (invalid_request_error, the param named: e.g. `tools[2].type`, `background`,
/// `input[1].type`, `input[0].content[1].type`) for what a chat backend cannot do: built-in
/// tools (any `tools[i].type` other than "function"), `background: true`, `conversation`,
/// `prompt`, `previous_response_id` (all three need state the gateway does not keep), a
/// `tool_choice` naming anything but a function, input item or content types without a chat
/// equivalent (item_reference, reasoning, file inputs, audio...). The fields it translates are
/// checked for the JSON types it reads. Fields it does not know are ignored (dropped).
pub fn refuse_untranslatable(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    for param in ["conversation", "prompt", "previous_response_id"] {
        if fields.get(param).is_some_and(|v| !v.is_null()) {
            return Err(unsupported_parameter(param));
        }
    }
    match fields.get("background") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return Err(unsupported_parameter("background")),
        Some(other) => return Err(wrong_type("background", "a boolean", other)),
    }
    if let Some(tools) = fields.get("tools").filter(|v| !v.is_null()) {
        check_tools(tools)?;
    }
    if let Some(Value::Object(choice)) = fields.get("tool_choice") {
        check_function("tool_choice", choice)?;
    }
    match fields.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_item(&format!("input[{i}]"), item)),
        _ => Ok(()),
    }
}

/// The chat completions body (JSON bytes): `model` = upstream_model; `instructions` -> a
/// leading system message; `input` string -> one user message; input items: messages (role
/// user/assistant/system/developer; content string or parts input_text/output_text -> text
/// parts, input_image with image_url -> image_url part keeping detail, refusal -> refusal
/// part), function_call items -> an assistant message with tool_calls (consecutive ones, and
/// an assistant message right before them, merged into one message), function_call_output ->
/// role tool with tool_call_id; function tools `{type,name,description,parameters,strict}` ->
/// `{type:"function",function:{...}}`; with tools, tool_choice strings kept, `{type:"function",
/// name}` -> `{type:"function",function:{name}}`, and parallel_tool_calls kept (chat refuses
/// both without tools); text.format json_object/json_schema -> response_format; temperature,
/// top_p, user kept; reasoning.effort -> reasoning_effort; top_logprobs above 0 ->
/// logprobs:true + top_logprobs; `max_tokens` = output_cap (`max_completion_tokens` with a
/// reasoning effort, as reasoning models require); when stream, `stream: true` and
/// `stream_options: {include_usage: true}`.
///
/// Called only after refuse_untranslatable passed and the caller validated the basic types
/// (model string, input string or array, instructions string or null).
pub fn chat_body(
    fields: &Map<String, Value>,
    upstream_model: &str,
    output_cap: u64,
    stream: bool,
) -> Bytes {
    let mut body = Map::new();
    body.insert("model".into(), upstream_model.into());
    body.insert("messages".into(), Value::Array(messages(fields)));
    put_tools(fields, &mut body);
    if let Some(format) = response_format(fields) {
        body.insert("response_format".into(), format);
    }
    for name in ["temperature", "top_p", "user"] {
        if let Some(value) = fields.get(name).filter(|v| !v.is_null()) {
            body.insert(name.into(), value.clone());
        }
    }
    // Reasoning models take their cap only as `max_completion_tokens` on chat completions.
    let mut cap_field = "max_tokens";
    if let Some(effort) = fields
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        body.insert("reasoning_effort".into(), effort.clone());
        cap_field = "max_completion_tokens";
    }
    if let Some(top) = fields
        .get("top_logprobs")
        .filter(|n| n.as_u64().is_some_and(|n| n > 0))
    {
        body.insert("logprobs".into(), true.into());
        body.insert("top_logprobs".into(), top.clone());
    }
    body.insert(cap_field.into(), output_cap.into());
    if stream {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    serde_json::to_vec(&body)
        .expect("invariant: a JSON object serialises")
        .into()
}

// === refusals ===

fn check_tools(tools: &Value) -> Result<(), GatewayError> {
    let Value::Array(tools) = tools else {
        return Err(wrong_type("tools", "an array", tools));
    };
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let Value::Object(tool) = tool else {
            return Err(wrong_type(&param, "an object", tool));
        };
        check_function(&param, tool)?;
    }
    Ok(())
}

/// A tool or tool choice must name a function: chat has no built-in tools.
fn check_function(param: &str, object: &Map<String, Value>) -> Result<(), GatewayError> {
    let type_param = format!("{param}.type");
    match required_string(object, param, "type")? {
        "function" => required_string(object, param, "name").map(drop),
        other => Err(GatewayError::invalid(
            &type_param,
            "unsupported_value",
            format!(
                "'{type_param}': '{other}' is not available for this model: it is served \
                 through chat completions, which have function tools only"
            ),
        )),
    }
}

fn check_item(param: &str, item: &Value) -> Result<(), GatewayError> {
    let Value::Object(fields) = item else {
        return Err(wrong_type(param, "an object", item));
    };
    // Without a usable type: the error says what is missing or mistyped.
    let kind = match item_type(item) {
        Some(kind) => kind,
        None => required_string(fields, param, "type")?,
    };
    match kind {
        "message" => check_message(param, fields),
        "function_call" => ["call_id", "name", "arguments"]
            .into_iter()
            .try_for_each(|key| required_string(fields, param, key).map(drop)),
        "function_call_output" => {
            required_string(fields, param, "call_id")?;
            check_content(&format!("{param}.output"), fields.get("output"))
        }
        other => Err(unsupported_type(&format!("{param}.type"), other)),
    }
}

fn check_message(param: &str, message: &Map<String, Value>) -> Result<(), GatewayError> {
    let role = required_string(message, param, "role")?;
    if !ROLES.contains(&role) {
        let role_param = format!("{param}.role");
        return Err(GatewayError::invalid(
            &role_param,
            "invalid_value",
            format!(
                "invalid value for '{role_param}': '{role}'; supported values are {}",
                ROLES.join(", ")
            ),
        ));
    }
    check_content(&format!("{param}.content"), message.get("content"))
}

/// Message content or a function call's output: a string or a list of translatable parts.
fn check_content(param: &str, content: Option<&Value>) -> Result<(), GatewayError> {
    match content {
        None | Some(Value::Null) => Err(missing(param)),
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .try_for_each(|(j, part)| check_part(&format!("{param}[{j}]"), part)),
        Some(other) => Err(wrong_type(param, "a string or an array", other)),
    }
}

fn check_part(param: &str, part: &Value) -> Result<(), GatewayError> {
    let Value::Object(fields) = part else {
        return Err(wrong_type(param, "an object", part));
    };
    match required_string(fields, param, "type")? {
        "input_text" | "output_text" => required_string(fields, param, "text").map(drop),
        "refusal" => required_string(fields, param, "refusal").map(drop),
        "input_image" => match fields.get("image_url") {
            Some(Value::String(_)) => Ok(()),
            _ if fields.get("file_id").is_some_and(|v| !v.is_null()) => Err(GatewayError::invalid(
                &format!("{param}.file_id"),
                "unsupported_parameter",
                format!(
                    "'{param}.file_id': the gateway keeps no files; send the image as 'image_url'"
                ),
            )),
            _ => required_string(fields, param, "image_url").map(drop),
        },
        other => Err(unsupported_type(&format!("{param}.type"), other)),
    }
}

/// The string `object.key`, or a 400 naming `param.key`.
fn required_string<'a>(
    object: &'a Map<String, Value>,
    param: &str,
    key: &str,
) -> Result<&'a str, GatewayError> {
    match object.get(key) {
        Some(Value::String(value)) => Ok(value),
        None | Some(Value::Null) => Err(missing(&format!("{param}.{key}"))),
        Some(other) => Err(wrong_type(&format!("{param}.{key}"), "a string", other)),
    }
}

fn unsupported_parameter(param: &str) -> GatewayError {
    GatewayError::invalid(
        param,
        "unsupported_parameter",
        format!(
            "'{param}' is not supported for this model: it is served through chat completions \
             and the gateway keeps no state between requests"
        ),
    )
}

fn unsupported_type(param: &str, value: &str) -> GatewayError {
    GatewayError::invalid(
        param,
        "unsupported_value",
        format!(
            "'{param}': '{value}' is not supported for this model: it is served through chat \
             completions, which have no equivalent"
        ),
    )
}

// === translation ===

/// An input item's type; an item without one is a message when it has a role (the "easy"
/// input message form).
fn item_type(item: &Value) -> Option<&str> {
    match item.get("type") {
        Some(Value::String(kind)) => Some(kind),
        None | Some(Value::Null) if item.get("role").is_some_and(Value::is_string) => {
            Some("message")
        }
        _ => None,
    }
}

fn messages(fields: &Map<String, Value>) -> Vec<Value> {
    let mut messages = Vec::new();
    if let Some(Value::String(instructions)) = fields.get("instructions") {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match fields.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => items.iter().for_each(|item| push_item(&mut messages, item)),
        _ => {}
    }
    messages
}

fn push_item(messages: &mut Vec<Value>, item: &Value) {
    match item_type(item) {
        Some("message") => messages.push(json!({
            "role": item["role"],
            "content": content(&item["content"]),
        })),
        Some("function_call") => push_call(messages, item),
        Some("function_call_output") => messages.push(json!({
            "role": "tool",
            "tool_call_id": item["call_id"],
            "content": content(&item["output"]),
        })),
        // Refused by `refuse_untranslatable`.
        _ => {}
    }
}

/// Appends a function call to the assistant message just before it, or to a new one: chat
/// expects one assistant turn holding its text and all its tool calls.
fn push_call(messages: &mut Vec<Value>, item: &Value) {
    let call = json!({
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    });
    if let Some(Value::Object(last)) = messages.last_mut()
        && last.get("role").and_then(Value::as_str) == Some("assistant")
    {
        match last.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                last.insert("tool_calls".into(), json!([call]));
            }
        }
        return;
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
}

fn content(content: &Value) -> Value {
    match content {
        Value::Array(parts) => parts.iter().filter_map(part).collect(),
        other => other.clone(),
    }
}

fn part(part: &Value) -> Option<Value> {
    match part["type"].as_str()? {
        "input_text" | "output_text" => Some(json!({"type": "text", "text": part["text"]})),
        "refusal" => Some(json!({"type": "refusal", "refusal": part["refusal"]})),
        "input_image" => {
            let mut image = json!({"url": part["image_url"]});
            if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                image["detail"] = detail.clone();
            }
            Some(json!({"type": "image_url", "image_url": image}))
        }
        _ => None,
    }
}

/// Function tools in chat's shape and, with them, the tool choice and parallel calls setting.
fn put_tools(fields: &Map<String, Value>, body: &mut Map<String, Value>) {
    let tools: Vec<Value> = fields
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|tool| tool["type"] == "function")
        .map(function_tool)
        .collect();
    if tools.is_empty() {
        return;
    }
    body.insert("tools".into(), tools.into());
    if let Some(choice) = fields.get("tool_choice").and_then(tool_choice) {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(parallel) = fields.get("parallel_tool_calls").filter(|p| p.is_boolean()) {
        body.insert("parallel_tool_calls".into(), parallel.clone());
    }
}

fn function_tool(tool: &Value) -> Value {
    let function: Map<String, Value> = ["name", "description", "parameters", "strict"]
        .into_iter()
        .filter_map(|key| {
            let value = tool.get(key).filter(|v| !v.is_null())?;
            Some((key.to_owned(), value.clone()))
        })
        .collect();
    json!({"type": "function", "function": function})
}

fn tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(_) => Some(choice.clone()),
        Value::Object(_) if choice["type"] == "function" => {
            Some(json!({"type": "function", "function": {"name": choice["name"]}}))
        }
        _ => None,
    }
}

/// `text.format` as chat's `response_format`; plain text needs none.
fn response_format(fields: &Map<String, Value>) -> Option<Value> {
    let Value::Object(format) = fields.get("text")?.get("format")? else {
        return None;
    };
    match format.get("type")?.as_str()? {
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let mut schema = format.clone();
            schema.remove("type");
            Some(json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: Value) -> Map<String, Value> {
        serde_json::from_value(value).expect("a JSON object")
    }

    fn translated(request: Value) -> Value {
        let body = chat_body(&fields(request), "upstream", 64, false);
        serde_json::from_slice(&body).expect("the body is JSON")
    }

    fn refused_param(request: Value) -> Option<String> {
        refuse_untranslatable(&fields(request))
            .err()
            .map(|e| e.param().unwrap_or_default().to_owned())
    }

    #[test]
    fn a_plain_request_becomes_a_chat_request() {
        assert_eq!(
            translated(
                json!({"model": "alias", "input": "Hi", "instructions": "Be brief.",
                "store": true, "metadata": {"k": "v"}, "unknown_field": 1})
            ),
            json!({"model": "upstream", "max_tokens": 64, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]})
        );
        let streamed = chat_body(&fields(json!({"input": "Hi"})), "up", 7, true);
        let streamed: Value = serde_json::from_slice(&streamed).expect("JSON");
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["stream_options"], json!({"include_usage": true}));
        assert_eq!(streamed["max_tokens"], 7);
    }

    #[test]
    fn each_setting_translates_by_its_rule() {
        let rows = [
            (json!({"temperature": 0.3}), json!({"temperature": 0.3})),
            (
                json!({"top_p": 0.9, "user": "u"}),
                json!({"top_p": 0.9, "user": "u"}),
            ),
            (
                json!({"reasoning": {"effort": "low", "summary": "auto"}}),
                json!({"reasoning_effort": "low", "max_completion_tokens": 64}),
            ),
            (json!({"reasoning": {"effort": null}}), json!({})),
            (
                json!({"top_logprobs": 3}),
                json!({"logprobs": true, "top_logprobs": 3}),
            ),
            (json!({"top_logprobs": 0}), json!({})),
            (json!({"text": {"format": {"type": "text"}}}), json!({})),
            (
                json!({"text": {"format": {"type": "json_object"}}}),
                json!({"response_format": {"type": "json_object"}}),
            ),
            (
                json!({"text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true}}}),
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}}}),
            ),
            (
                json!({"tool_choice": "required", "parallel_tool_calls": false}),
                json!({}),
            ),
        ];
        for (extra, expected) in rows {
            let mut request = json!({"input": "x"});
            request
                .as_object_mut()
                .expect("object")
                .extend(fields(extra.clone()));
            let mut body = translated(request);
            let body = body.as_object_mut().expect("object");
            for fixed in ["model", "messages", "max_tokens"] {
                body.remove(fixed);
            }
            assert_eq!(Value::Object(body.clone()), expected, "{extra}");
        }
    }

    #[test]
    fn function_tools_and_tool_choice_take_chats_shape() {
        let body = translated(json!({"input": "x", "parallel_tool_calls": false,
            "tools": [{"type": "function", "name": "get_weather", "description": "Weather",
                "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"}}));
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "get_weather",
                "description": "Weather", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(body["parallel_tool_calls"], false);
        let body = translated(json!({"input": "x", "tool_choice": "none",
            "tools": [{"type": "function", "name": "f"}]}));
        assert_eq!(body["tool_choice"], "none");
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "f"}}])
        );
    }

    #[test]
    fn input_items_become_messages_with_calls_merged_and_outputs_as_tool_messages() {
        let body = translated(json!({"input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather in Paris and Rome?"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA"},
            ]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{\"c\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": "{\"c\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2",
                "output": [{"type": "input_text", "text": "21C"}]},
            {"type": "function_call", "call_id": "call_3", "name": "w", "arguments": "{}"},
        ]}));
        let call = |id: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": "w", "arguments": arguments}});
        assert_eq!(
            body["messages"],
            json!([
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
                    "tool_calls": [call("call_1", "{\"c\":\"Paris\"}"), call("call_2", "{\"c\":\"Rome\"}")]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "assistant", "content": null, "tool_calls": [call("call_3", "{}")]},
            ])
        );
    }

    #[test]
    fn what_chat_cannot_do_is_refused_naming_its_param() {
        let rows = [
            (
                json!({"tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g"}, {"type": "web_search"}]}),
                "tools[2].type",
            ),
            (json!({"tools": [{"type": "function"}]}), "tools[0].name"),
            (json!({"tools": [{"name": "f"}]}), "tools[0].type"),
            (json!({"tools": {"type": "function"}}), "tools"),
            (
                json!({"tool_choice": {"type": "file_search"}}),
                "tool_choice.type",
            ),
            (
                json!({"tool_choice": {"type": "function"}}),
                "tool_choice.name",
            ),
            (json!({"background": true}), "background"),
            (json!({"background": "yes"}), "background"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
            (
                json!({"previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"input": [{"role": "user", "content": "a"}, {"type": "item_reference", "id": "x"}]}),
                "input[1].type",
            ),
            (
                json!({"input": [{"type": "reasoning", "summary": []}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[1].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"input": [{"role": "tool", "content": "a"}]}),
                "input[0].role",
            ),
            (json!({"input": [{"role": "user"}]}), "input[0].content"),
            (json!({"input": [{"content": "a"}]}), "input[0].type"),
            (json!({"input": ["a"]}), "input[0]"),
            (
                json!({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}),
                "input[0].arguments",
            ),
            (
                json!({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_audio"}]}]}),
                "input[0].output[0].type",
            ),
        ];
        for (request, param) in rows {
            assert_eq!(
                refused_param(request.clone()).as_deref(),
                Some(param),
                "{request}"
            );
        }
    }

    #[test]
    fn translatable_requests_and_unknown_fields_pass() {
        for request in [
            json!({"input": "x", "background": false, "conversation": null, "include": ["x"], "vendor": {}}),
            json!({"input": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]}),
            json!({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}}),
        ] {
            assert_eq!(refused_param(request.clone()), None, "{request}");
        }
    }
}
