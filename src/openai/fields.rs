//! The well-known optional fields of a chat request, checked for their JSON type as OpenAI
//! checks them, so a wrongly typed field is a 400 naming it instead of an upstream's surprise.
//! Values are not range-checked here (backends differ on what they accept); unknown fields are
//! not checked at all and pass through untouched.

use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The JSON shape a field must have (`null` is always accepted: the field is then unset).
#[derive(Debug, Clone, Copy)]
enum Shape {
    Number,
    Integer,
    Boolean,
    String,
    Object,
    /// An array of objects, such as `tools`.
    ObjectArray,
    Array,
    /// A string or an array of strings, such as `stop`.
    StringOrStrings,
    /// A string or an object, such as `tool_choice`.
    StringOrObject,
    /// An object whose values are numbers, such as `logit_bias`.
    NumberMap,
}

const WELL_KNOWN: [(&str, Shape); 21] = [
    ("temperature", Shape::Number),
    ("top_p", Shape::Number),
    ("presence_penalty", Shape::Number),
    ("frequency_penalty", Shape::Number),
    ("seed", Shape::Integer),
    ("top_logprobs", Shape::Integer),
    ("logprobs", Shape::Boolean),
    ("parallel_tool_calls", Shape::Boolean),
    ("store", Shape::Boolean),
    ("user", Shape::String),
    ("service_tier", Shape::String),
    ("reasoning_effort", Shape::String),
    ("response_format", Shape::Object),
    ("metadata", Shape::Object),
    ("prediction", Shape::Object),
    ("tools", Shape::ObjectArray),
    ("functions", Shape::ObjectArray),
    ("modalities", Shape::Array),
    ("stop", Shape::StringOrStrings),
    ("tool_choice", Shape::StringOrObject),
    ("logit_bias", Shape::NumberMap),
];

/// Checks every well-known field present in `fields`.
pub fn check_well_known(fields: &Map<String, Value>) -> Result<(), GatewayError> {
    for (name, shape) in WELL_KNOWN {
        if let Some(value) = fields.get(name) {
            check(name, shape, value)?;
        }
    }
    if let Some(Value::Object(format)) = fields.get("response_format") {
        match format.get("type") {
            Some(Value::String(_)) => {}
            None | Some(Value::Null) => return Err(missing("response_format.type")),
            Some(other) => return Err(wrong_type("response_format.type", "a string", other)),
        }
    }
    Ok(())
}

fn check(name: &str, shape: Shape, value: &Value) -> Result<(), GatewayError> {
    let fits = match (shape, value) {
        (_, Value::Null) => true,
        (Shape::Number, Value::Number(_)) => true,
        (Shape::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Shape::Boolean, Value::Bool(_)) => true,
        (Shape::String | Shape::StringOrStrings | Shape::StringOrObject, Value::String(_)) => true,
        (Shape::Object | Shape::StringOrObject, Value::Object(_)) => true,
        (Shape::Array, Value::Array(_)) => true,
        (Shape::ObjectArray, Value::Array(items)) => {
            return each(name, items, "an object", Value::is_object);
        }
        (Shape::StringOrStrings, Value::Array(items)) => {
            return each(name, items, "a string", Value::is_string);
        }
        (Shape::NumberMap, Value::Object(entries)) => {
            return match entries.iter().find(|(_, v)| !v.is_number()) {
                Some((key, v)) => Err(wrong_type(&format!("{name}.{key}"), "a number", v)),
                None => Ok(()),
            };
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(wrong_type(name, expected(shape), value))
    }
}

/// Every item of an array field has the right type, else the error names `name[i]`.
fn each(
    name: &str,
    items: &[Value],
    expected: &str,
    fits: impl Fn(&Value) -> bool,
) -> Result<(), GatewayError> {
    match items.iter().position(|item| !fits(item)) {
        Some(i) => Err(wrong_type(&format!("{name}[{i}]"), expected, &items[i])),
        None => Ok(()),
    }
}

fn expected(shape: Shape) -> &'static str {
    match shape {
        Shape::Number => "a decimal",
        Shape::Integer => "an integer",
        Shape::Boolean => "a boolean",
        Shape::String => "a string",
        Shape::Object | Shape::NumberMap => "an object",
        Shape::ObjectArray | Shape::Array => "an array",
        Shape::StringOrStrings => "a string or an array of strings",
        Shape::StringOrObject => "a string or an object",
    }
}

pub(super) fn missing(param: &str) -> GatewayError {
    GatewayError::invalid(
        param,
        "missing_required_parameter",
        format!("missing required parameter: '{param}'"),
    )
}

pub(super) fn wrong_type(param: &str, expected: &str, got: &Value) -> GatewayError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    GatewayError::invalid(
        param,
        "invalid_type",
        format!("invalid type for '{param}': expected {expected}, but got {got} instead"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(extra: &str) -> Option<String> {
        let json = format!("{{{extra}}}");
        let fields: Map<String, Value> = serde_json::from_str(&json).expect("valid JSON object");
        check_well_known(&fields)
            .err()
            .map(|e| e.param().unwrap_or_default().to_owned())
    }

    #[test]
    fn wrong_types_name_their_param_and_right_ones_pass() {
        let rows = [
            (r#""temperature":"hot""#, Some("temperature")),
            (r#""temperature":0.7"#, None),
            (r#""top_p":[1]"#, Some("top_p")),
            (r#""presence_penalty":true"#, Some("presence_penalty")),
            (r#""frequency_penalty":null"#, None),
            (r#""seed":1.5"#, Some("seed")),
            (r#""seed":-42"#, None),
            (r#""stop":5"#, Some("stop")),
            (r#""stop":["a",3]"#, Some("stop[1]")),
            (r#""stop":["a","b"]"#, None),
            (r#""logit_bias":{"50256":"x"}"#, Some("logit_bias.50256")),
            (r#""logit_bias":{"50256":-100}"#, None),
            (r#""tools":{"type":"function"}"#, Some("tools")),
            (r#""tools":[{"type":"function"},"x"]"#, Some("tools[1]")),
            (r#""tool_choice":"auto""#, None),
            (r#""tool_choice":7"#, Some("tool_choice")),
            (r#""response_format":"json""#, Some("response_format")),
            (r#""response_format":{}"#, Some("response_format.type")),
            (
                r#""response_format":{"type":1}"#,
                Some("response_format.type"),
            ),
            (r#""response_format":{"type":"json_object"}"#, None),
            (r#""user":42"#, Some("user")),
            (r#""logprobs":"yes""#, Some("logprobs")),
            (r#""top_logprobs":2"#, None),
            (r#""some_vendor_field":{"anything":[1,"x"]}"#, None),
        ];
        for (extra, param) in rows {
            assert_eq!(param_of(extra).as_deref(), param, "{extra}");
        }
    }
}
