//! A chat completions request as a Messages API body, and the refusal of what has no Messages
//! form.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::turns::{Conversation, Turn, check_messages};
use super::{as_object, required, required_string, unsupported_type};
use crate::error::GatewayError;

/// The `tool_choice` strings chat knows, all of which the Messages API has.
const TOOL_CHOICES: [&str; 3] = ["auto", "required", "none"];

/// 400 (invalid_request_error, the param named, e.g. `n`, `logprobs`,
/// `messages[3].content[1].type`, `temperature`, `messages[2].tool_calls[0].function.arguments`)
/// for a chat request the Messages API cannot serve: `n` > 1, `logprobs` / `top_logprobs`,
/// `logit_bias`, `response_format` other than text, `audio` and `modalities` beyond text, the
/// legacy `functions` / `function_call` and `function` role, `web_search_options`,
/// `temperature` outside 0..=1 (Anthropic's range), tools that are not functions, content
/// parts other than text and image_url (input_audio, file...; images only from users and
/// tools), image URLs that are neither https nor base64 data URLs of JPEG, PNG, GIF or WebP,
/// assistant tool call arguments that are not a JSON object, tool messages without a
/// `tool_call_id`, and a conversation with no user or assistant message to send. Everything it
/// accepts, [`messages_body`] translates.
///
/// Fields it does not know pass the check and are dropped by the translation, as are these
/// known ones with no Messages equivalent that leave the answer's content to the model:
/// `frequency_penalty`, `presence_penalty`, `seed`, `service_tier`, `store`, `metadata`,
/// `prediction`, `reasoning_effort`, `verbosity`, `stream_options` (usage is always reported),
/// a message's `name` and `refusal`, and an image part's `detail`.
pub fn refuse_untranslatable(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    refuse_settings(fields)?;
    check_temperature(fields)?;
    check_tools(fields)?;
    check_messages(messages_of(fields))
}

/// The Messages API body (JSON bytes) for a request [`refuse_untranslatable`] accepted:
/// `model` = upstream_model; system and developer messages -> top-level `system` (joined with
/// blank lines); user and assistant messages -> content blocks (text; image_url data URLs ->
/// base64 image sources, https URLs -> url image sources); assistant tool_calls -> `tool_use`
/// blocks with the parsed arguments as `input`; tool messages -> `tool_result` blocks of a user
/// turn; consecutive turns of one role merged (the API requires alternation); function tools ->
/// `{name, description, input_schema}`; tool_choice auto -> `{type:auto}`, required ->
/// `{type:any}`, none -> `{type:none}`, a named function -> `{type:tool,name}`, and
/// parallel_tool_calls false -> `disable_parallel_tool_use` inside it; `max_tokens` =
/// output_cap (the API requires it); temperature kept, else top_p (newer models take one); stop -> `stop_sequences`;
/// user -> `metadata.user_id`; when stream, `stream: true`.
pub fn messages_body(
    fields: &Map<String, Value>,
    upstream_model: &str,
    output_cap: u64,
    stream: bool,
) -> Bytes {
    let conversation = Conversation::of(messages_of(fields));
    let mut body = Map::new();
    body.insert("model".into(), upstream_model.into());
    body.insert("max_tokens".into(), output_cap.into());
    if !conversation.system.is_empty() {
        body.insert("system".into(), conversation.system.join("\n\n").into());
    }
    let turns = conversation.turns.into_iter().map(Turn::into_json);
    body.insert("messages".into(), turns.collect());
    // Newer Claude models take one of the two, not both: `temperature` wins.
    let sampling = match fields.get("temperature").filter(|v| v.is_number()) {
        Some(_) => "temperature",
        None => "top_p",
    };
    if let Some(value) = fields.get(sampling).filter(|v| v.is_number()) {
        body.insert(sampling.into(), value.clone());
    }
    if let Some(stops) = stop_sequences(fields) {
        body.insert("stop_sequences".into(), stops);
    }
    put_tools(fields, &mut body);
    if let Some(user) = fields.get("user").filter(|u| u.is_string()) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    serde_json::to_vec(&body)
        .expect("invariant: a JSON object serialises")
        .into()
}

fn messages_of(fields: &Map<String, Value>) -> &[Value] {
    match fields.get("messages") {
        Some(Value::Array(messages)) => messages,
        _ => &[],
    }
}

// === refusals ===

/// Which request settings the Messages API has no form for, when set (not `null`): the param,
/// whether its value is refused, the error code, and what the API lacks.
type Rule = (&'static str, fn(&Value) -> bool, &'static str, &'static str);

fn refuse_settings(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    let rules: [Rule; 10] = [
        (
            "n",
            |n| n.as_f64().is_some_and(|n| n > 1.0),
            "unsupported_value",
            "a choice of answers",
        ),
        (
            "logprobs",
            |l| l == &Value::Bool(true),
            "unsupported_value",
            "log probabilities",
        ),
        (
            "top_logprobs",
            |n| n.as_u64() != Some(0),
            "unsupported_parameter",
            "log probabilities",
        ),
        (
            "logit_bias",
            |b| b.as_object().is_none_or(|b| !b.is_empty()),
            "unsupported_parameter",
            "logit bias",
        ),
        (
            "response_format",
            |f| f["type"] != "text",
            "unsupported_value",
            "response formats other than text",
        ),
        ("audio", |_| true, "unsupported_parameter", "audio output"),
        (
            "modalities",
            |m| m.as_array().is_none_or(|m| m.iter().any(|m| m != "text")),
            "unsupported_value",
            "output other than text",
        ),
        (
            "functions",
            |_| true,
            "unsupported_parameter",
            "legacy functions (use 'tools')",
        ),
        (
            "function_call",
            |_| true,
            "unsupported_parameter",
            "legacy functions (use 'tool_choice')",
        ),
        (
            "web_search_options",
            |_| true,
            "unsupported_parameter",
            "web search options",
        ),
    ];
    for (param, refused, code, lacks) in rules {
        if fields
            .get(param)
            .is_some_and(|v| !v.is_null() && refused(v))
        {
            return Err(GatewayError::invalid(
                param,
                code,
                format!(
                    "'{param}' is not supported for this model: it is served through the \
                     Anthropic Messages API, which has no {lacks}"
                ),
            ));
        }
    }
    Ok(())
}

/// Anthropic's temperature runs from 0 to 1, not chat's 0 to 2; a value outside is refused
/// rather than rescaled, since the two scales do not mean the same.
fn check_temperature(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    let Some(temperature) = fields.get("temperature").and_then(Value::as_f64) else {
        return Ok(());
    };
    let (code, bound) = if temperature > 1.0 {
        ("decimal_above_max_value", "<= 1")
    } else if temperature < 0.0 {
        ("decimal_below_min_value", ">= 0")
    } else {
        return Ok(());
    };
    Err(GatewayError::invalid(
        "temperature",
        code,
        format!(
            "invalid 'temperature': expected a value {bound} for this model (the Anthropic \
             Messages API's range is 0 to 1), but got {temperature} instead"
        ),
    ))
}

fn check_tools(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    if let Some(Value::Array(tools)) = fields.get("tools") {
        for (i, tool) in tools.iter().enumerate() {
            check_function(&format!("tools[{i}]"), tool)?;
        }
    }
    match fields.get("tool_choice") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(choice)) if TOOL_CHOICES.contains(&choice.as_str()) => Ok(()),
        Some(Value::String(choice)) => Err(GatewayError::invalid(
            "tool_choice",
            "invalid_value",
            format!(
                "invalid value for 'tool_choice': '{choice}'; supported values are {}",
                TOOL_CHOICES.join(", ")
            ),
        )),
        Some(choice) => check_function("tool_choice", choice),
    }
}

/// A tool or a tool choice: `{type: "function", function: {name, ...}}`, as the Messages API
/// has only client tools to offer in their place.
fn check_function(param: &str, tool: &Value) -> Result<(), GatewayError> {
    let object = as_object(param, tool)?;
    match required_string(object, param, "type")? {
        "function" => {
            let function_param = format!("{param}.function");
            let function = required(object, param, "function")?;
            let function = as_object(&function_param, function)?;
            required_string(function, &function_param, "name").map(drop)
        }
        other => Err(unsupported_type(&format!("{param}.type"), other)),
    }
}

// === translation ===

/// `stop` (a string or a list) as `stop_sequences`; empty and whitespace-only ones (which the
/// Messages API refuses) left out.
fn stop_sequences(fields: &Map<String, Value>) -> Option<Value> {
    let stops: Vec<&Value> = match fields.get("stop")? {
        stop @ Value::String(_) => vec![stop],
        Value::Array(stops) => stops.iter().collect(),
        _ => return None,
    };
    let stops: Vec<Value> = stops
        .into_iter()
        .filter(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        .cloned()
        .collect();
    (!stops.is_empty()).then_some(Value::Array(stops))
}

/// Function tools in the Messages API's shape and, with them, the tool choice.
fn put_tools(fields: &Map<String, Value>, body: &mut Map<String, Value>) {
    let tools: Vec<Value> = fields
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tool| function_tool(&tool["function"]))
        .collect();
    if tools.is_empty() {
        return;
    }
    body.insert("tools".into(), tools.into());
    if let Some(choice) = tool_choice(fields) {
        body.insert("tool_choice".into(), choice);
    }
}

/// A chat function as a Messages tool; a function without parameters takes no input.
fn function_tool(function: &Value) -> Option<Value> {
    let schema = match &function["parameters"] {
        parameters @ Value::Object(_) => parameters.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    let mut tool = json!({"name": function["name"].as_str()?, "input_schema": schema});
    if let Some(description) = function.get("description").filter(|d| d.is_string()) {
        tool["description"] = description.clone();
    }
    Some(tool)
}

/// The tool choice, with `disable_parallel_tool_use` when the client turned parallel calls
/// off (a setting the Messages API keeps inside the choice; `none` has no such field);
/// `None` when the API's default (auto, parallel calls allowed) says it all.
fn tool_choice(fields: &Map<String, Value>) -> Option<Value> {
    let parallel = fields.get("parallel_tool_calls") != Some(&Value::Bool(false));
    let mut choice = match fields.get("tool_choice") {
        Some(Value::String(choice)) => match choice.as_str() {
            "required" => json!({"type": "any"}),
            "none" => return Some(json!({"type": "none"})),
            _ => json!({"type": "auto"}),
        },
        Some(choice @ Value::Object(_)) => {
            json!({"type": "tool", "name": choice["function"]["name"]})
        }
        _ if parallel => return None,
        _ => json!({"type": "auto"}),
    };
    if !parallel {
        choice["disable_parallel_tool_use"] = true.into();
    }
    Some(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(value: Value) -> Map<String, Value> {
        serde_json::from_value(value).expect("a JSON object")
    }

    fn with_messages(extra: Value) -> Map<String, Value> {
        let mut request = fields(json!({"model": "alias",
            "messages": [{"role": "user", "content": "Hi"}]}));
        request.extend(fields(extra));
        request
    }

    fn translated(request: Map<String, Value>) -> Value {
        let body = messages_body(&request, "claude-up", 64, false);
        serde_json::from_slice(&body).expect("the body is JSON")
    }

    fn refused_param(request: Map<String, Value>) -> Option<String> {
        refuse_untranslatable(&request)
            .err()
            .map(|e| e.param().unwrap_or_default().to_owned())
    }

    #[test]
    fn a_plain_request_becomes_a_messages_request() {
        let request = with_messages(json!({"seed": 7, "presence_penalty": 0.5,
            "stream_options": {"include_usage": true}, "store": true, "vendor_field": {}}));
        assert_eq!(refused_param(request.clone()), None);
        assert_eq!(
            translated(request),
            json!({"model": "claude-up", "max_tokens": 64, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ]}),
            "unknown and dropped fields are gone"
        );
        let streamed = messages_body(&with_messages(json!({})), "up", 7, true);
        let streamed: Value = serde_json::from_slice(&streamed).expect("JSON");
        assert_eq!(
            (&streamed["stream"], &streamed["max_tokens"]),
            (&json!(true), &json!(7))
        );
    }

    #[test]
    fn each_setting_translates_by_its_rule() {
        let weather = json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}}, "strict": true}}]);
        let tool = json!({"name": "get_weather", "description": "Weather", "input_schema":
            {"type": "object", "properties": {"city": {"type": "string"}}}});
        let rows = [
            (
                json!({"temperature": 0.3, "top_p": 0.9}),
                json!({"temperature": 0.3}),
            ),
            (json!({"top_p": 0.9}), json!({"top_p": 0.9})),
            (
                json!({"stop": ["\n", " ", "END"]}),
                json!({"stop_sequences": ["END"]}),
            ),
            (json!({"temperature": null}), json!({})),
            (json!({"stop": "END"}), json!({"stop_sequences": ["END"]})),
            (
                json!({"stop": ["a", "", "b"]}),
                json!({"stop_sequences": ["a", "b"]}),
            ),
            (json!({"stop": []}), json!({})),
            (
                json!({"user": "u-1"}),
                json!({"metadata": {"user_id": "u-1"}}),
            ),
            (
                json!({"response_format": {"type": "text"}, "n": 1, "logprobs": false}),
                json!({}),
            ),
            (json!({"tools": weather}), json!({"tools": [tool]})),
            (
                json!({"tools": [{"type": "function", "function": {"name": "now"}}]}),
                json!({"tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]}),
            ),
            (
                json!({"tools": weather, "tool_choice": "auto"}),
                json!({"tools": [tool], "tool_choice": {"type": "auto"}}),
            ),
            (
                json!({"tools": weather, "tool_choice": "required"}),
                json!({"tools": [tool], "tool_choice": {"type": "any"}}),
            ),
            (
                json!({"tools": weather, "tool_choice": "none", "parallel_tool_calls": false}),
                json!({"tools": [tool], "tool_choice": {"type": "none"}}),
            ),
            (
                json!({"tools": weather, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
                json!({"tools": [tool], "tool_choice": {"type": "tool", "name": "get_weather"}}),
            ),
            (
                json!({"tools": weather, "parallel_tool_calls": false}),
                json!({"tools": [tool], "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}),
            ),
            (
                json!({"tools": weather, "tool_choice": "required", "parallel_tool_calls": false}),
                json!({"tools": [tool], "tool_choice": {"type": "any", "disable_parallel_tool_use": true}}),
            ),
            (
                json!({"tools": weather, "parallel_tool_calls": true}),
                json!({"tools": [tool]}),
            ),
            (json!({"tools": [], "tool_choice": "none"}), json!({})),
        ];
        for (extra, expected) in rows {
            let request = with_messages(extra.clone());
            assert_eq!(refused_param(request.clone()), None, "{extra}");
            let mut body = translated(request);
            let body = body.as_object_mut().expect("an object");
            for fixed in ["model", "messages", "max_tokens"] {
                body.remove(fixed);
            }
            assert_eq!(Value::Object(body.clone()), expected, "{extra}");
        }
    }

    #[test]
    fn a_conversation_keeps_its_system_text_turns_and_tool_results() {
        let request = fields(json!({"model": "alias", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is in this picture, and the weather there?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A==", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
            ]},
            {"role": "assistant", "content": "A cat in Paris.", "refusal": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "Thanks!"},
        ]}));
        assert_eq!(refused_param(request.clone()), None);
        let body = translated(request);
        assert_eq!(body["system"], "Be brief.\n\nUse tools.");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and the weather there?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4A=="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "A cat in Paris."},
                    {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "text", "text": "Thanks!"},
                ]},
            ])
        );
    }

    #[test]
    fn what_the_messages_api_cannot_do_is_refused_naming_its_param() {
        let call = |arguments: &str| {
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "d", "type": "function", "function": {"name": "f", "arguments": arguments}}]})
        };
        let user = json!({"role": "user", "content": "Hi"});
        let rows = [
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (
                json!({"audio": {"voice": "alloy", "format": "wav"}}),
                "audio",
            ),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
            (json!({"web_search_options": {}}), "web_search_options"),
            (json!({"temperature": 1.5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "custom", "custom": {}}]}),
                "tools[1].type",
            ),
            (
                json!({"tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (json!({"tool_choice": "sometimes"}), "tool_choice"),
            (
                json!({"tool_choice": {"type": "allowed_tools"}}),
                "tool_choice.type",
            ),
            (
                json!({"tool_choice": {"type": "function", "function": {}}}),
                "tool_choice.function.name",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
                "messages[0].content[1].type",
            ),
            (
                json!({"messages": [user, {"role": "user", "content": [{"type": "file", "file": {}}]}]}),
                "messages[1].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url",
                "image_url": {"url": "http://example.com/a.png"}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "image_url",
                "image_url": {"url": "https://example.com/a.png"}}]}, user]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [user, call("{\"a\":")]}),
                "messages[1].tool_calls[1].function.arguments",
            ),
            (
                json!({"messages": [user, call("[1,2]")]}),
                "messages[1].tool_calls[1].function.arguments",
            ),
            (
                json!({"messages": [user, {"role": "assistant", "tool_calls": [{"type": "function",
                "function": {"name": "f", "arguments": "{}"}}]}]}),
                "messages[1].tool_calls[0].id",
            ),
            (
                json!({"messages": [user, {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom",
                "custom": {}}]}]}),
                "messages[1].tool_calls[0].type",
            ),
            (
                json!({"messages": [user, {"role": "tool", "content": "18C"}]}),
                "messages[1].tool_call_id",
            ),
            (
                json!({"messages": [user, {"role": "function", "name": "f", "content": "x"}]}),
                "messages[1].role",
            ),
            (
                json!({"messages": [{"role": "system", "content": "Be brief."}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": null}]}),
                "messages",
            ),
        ];
        for (extra, param) in rows {
            let request = with_messages(extra.clone());
            assert_eq!(refused_param(request).as_deref(), Some(param), "{extra}");
        }
        let error = refuse_untranslatable(&with_messages(json!({"n": 3}))).expect_err("refused");
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(error.error_type(), "invalid_request_error");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::cases;

        fn part() -> impl Strategy<Value = Value> {
            prop_oneof![
                "\\PC{0,8}".prop_map(|text| json!({"type": "text", "text": text})),
                prop::sample::select(vec![
                    "https://example.com/a.png",
                    "data:image/png;base64,AA",
                    "http://example.com/a.png",
                ])
                .prop_map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
                Just(json!({"type": "input_audio", "input_audio": {}})),
            ]
        }

        fn content() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                "\\PC{0,8}".prop_map(Value::String),
                prop::collection::vec(part(), 0..3).prop_map(Value::Array),
            ]
        }

        fn message() -> impl Strategy<Value = Value> {
            let roles = vec!["system", "developer", "user", "assistant", "tool"];
            let arguments = vec!["{}", "{\"a\":1}", "", "[1]"];
            (
                prop::sample::select(roles),
                content(),
                prop::option::of(prop::sample::select(arguments)),
            )
                .prop_map(|(role, content, arguments)| {
                    let mut message = json!({"role": role, "content": content});
                    match (role, arguments) {
                        ("assistant", Some(arguments)) => {
                            message["tool_calls"] = json!([{"id": "c", "type": "function",
                                "function": {"name": "f", "arguments": arguments}}]);
                        }
                        ("tool", _) => message["tool_call_id"] = json!("c"),
                        _ => {}
                    }
                    message
                })
        }

        fn is_blank_block(block: &Value) -> bool {
            block["type"] == "text" && block["text"].as_str().is_none_or(|t| t.trim().is_empty())
        }

        proptest! {
            #![proptest_config(cases(256))]

            /// Whatever the conversation, a request is refused with a param named, or becomes a
            /// body of alternating, non-empty turns without blank text.
            #[test]
            fn accepted_conversations_translate_to_alternating_non_empty_turns(
                messages in prop::collection::vec(message(), 0..8),
            ) {
                let request = fields(json!({"model": "m", "messages": messages}));
                match refuse_untranslatable(&request) {
                    Err(error) => prop_assert!(error.param().is_some()),
                    Ok(()) => {
                        let body = translated(request);
                        let turns = body["messages"].as_array().expect("a list");
                        prop_assert!(!turns.is_empty());
                        for pair in turns.windows(2) {
                            prop_assert_ne!(&pair[0]["role"], &pair[1]["role"]);
                        }
                        for turn in turns {
                            let blocks = turn["content"].as_array().expect("blocks");
                            prop_assert!(!blocks.is_empty());
                            prop_assert!(!blocks.iter().any(is_blank_block), "{}", turn);
                        }
                    }
                }
            }
        }
    }
}
