//! A prompt or an input given as text or as token ids, the four shapes OpenAI accepts for
//! `/v1/embeddings` `input` and `/v1/completions` `prompt`: a string, an array of strings, an
//! array of token ids, or an array of such arrays. Checked with the param named, estimated
//! erring high, and counted with a tokenizer when no usage is reported.

use serde_json::{Map, Value};

use super::fields::{missing, wrong_type};
use super::tokens::TokenCounter;
use crate::error::GatewayError;

/// The most items one array may hold, as OpenAI bounds them.
pub const MAX_ITEMS: usize = 2048;
/// The largest token id accepted.
const MAX_TOKEN_ID: u64 = (1 << 31) - 1;

/// Checks `fields[param]` (present, never empty) and returns its token estimate: a token per
/// three bytes of text, one per token id.
pub fn check(fields: &Map<String, Value>, param: &'static str) -> Result<u64, GatewayError> {
    let invalid = |message: String| GatewayError::invalid(param, "invalid_value", message);
    let items = match fields.get(param) {
        None | Some(Value::Null) => return Err(missing(param)),
        Some(Value::String(text)) => return text_tokens(text, param),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(wrong_type(
                param,
                "a string, an array of strings, or an array of token arrays",
                other,
            ));
        }
    };
    if items.is_empty() {
        return Err(invalid(format!("'{param}' must not be an empty array")));
    }
    if items.len() > MAX_ITEMS {
        return Err(invalid(format!(
            "'{param}' may hold at most {MAX_ITEMS} items, got {}",
            items.len()
        )));
    }
    let mut total = 0u64;
    match &items[0] {
        Value::String(_) => {
            for item in items {
                let Value::String(text) = item else {
                    return Err(invalid(format!(
                        "'{param}' mixes strings with other values"
                    )));
                };
                total = total.saturating_add(text_tokens(text, param)?);
            }
        }
        Value::Number(_) => total = token_ids(items, param)?,
        Value::Array(_) => {
            for item in items {
                let Value::Array(ids) = item else {
                    return Err(invalid(format!(
                        "'{param}' mixes token arrays with other values"
                    )));
                };
                total = total.saturating_add(token_ids(ids, param)?);
            }
        }
        _ => {
            return Err(invalid(format!(
                "'{param}' items must be strings, token ids or token arrays"
            )));
        }
    }
    Ok(total)
}

/// The tokens of a checked `value` counted with `counter`: text exactly within the counter's
/// budget, token ids one each.
pub fn count(value: Option<&Value>, counter: TokenCounter) -> u64 {
    let mut text = counter.budgeted();
    let mut ids = 0u64;
    match value {
        Some(Value::String(input)) => text.add(input),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(input) => text.add(input),
                    Value::Array(tokens) => ids = ids.saturating_add(tokens.len() as u64),
                    _ => ids = ids.saturating_add(1),
                }
            }
        }
        _ => {}
    }
    text.total().saturating_add(ids)
}

fn text_tokens(text: &str, param: &'static str) -> Result<u64, GatewayError> {
    if text.is_empty() {
        return Err(GatewayError::invalid(
            param,
            "invalid_value",
            format!("'{param}' must not contain an empty string"),
        ));
    }
    Ok((text.len() as u64).div_ceil(3))
}

/// The count of a token array, each id a non-negative integer.
fn token_ids(ids: &[Value], param: &'static str) -> Result<u64, GatewayError> {
    if ids.is_empty() {
        return Err(GatewayError::invalid(
            param,
            "invalid_value",
            format!("'{param}' must not contain an empty token array"),
        ));
    }
    if ids
        .iter()
        .any(|id| id.as_u64().is_none_or(|id| id > MAX_TOKEN_ID))
    {
        return Err(GatewayError::invalid(
            param,
            "invalid_value",
            "a token array must hold only non-negative integer token ids",
        ));
    }
    Ok(ids.len() as u64)
}
