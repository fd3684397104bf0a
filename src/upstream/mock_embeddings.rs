//! The mock backend's embeddings: a unit vector per input, the same for the same input every
//! time (seeded from its bytes), of the request's `dimensions` or the configured size, as
//! floats or as base64 little-endian `f32`s (what the OpenAI SDKs ask for by default).

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::GatewayError;

/// The most numbers the mock makes for one request (inputs times dimensions): enough for any
/// test, and a bound on the memory and time a request can make it spend.
pub const MAX_NUMBERS: usize = 1 << 20;

/// The answer to an embeddings body (already validated by the gateway; anything odd in it is
/// embedded as its JSON text); a 400 past `MAX_NUMBERS`.
pub fn answer(model: &str, configured_dimensions: u32, body: &[u8]) -> Result<Bytes, GatewayError> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let dimensions = request["dimensions"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(configured_dimensions as usize);
    let base64 = request["encoding_format"] == "base64";
    let inputs: Vec<Value> = match &request["input"] {
        Value::Array(items) if items.iter().all(Value::is_number) => vec![request["input"].clone()],
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    if inputs.len().saturating_mul(dimensions) > MAX_NUMBERS {
        return Err(GatewayError::invalid(
            "dimensions",
            "invalid_value",
            format!(
                "the mock model makes at most {MAX_NUMBERS} numbers a request (inputs x dimensions)"
            ),
        ));
    }
    let mut prompt_tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += tokens_of(input);
            let vector = unit_vector(&input.to_string(), dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(serde_json::to_vec(&body)
        .expect("invariant: a JSON value serialises")
        .into())
}

/// The mock's count: a token per word of text, one per token id.
fn tokens_of(input: &Value) -> u64 {
    match input {
        Value::String(text) => text.split_whitespace().count().max(1) as u64,
        Value::Array(ids) => ids.len() as u64,
        _ => 1,
    }
}

/// `dimensions` values from a generator seeded by `seed`, scaled to unit length.
fn unit_vector(seed: &str, dimensions: usize) -> Vec<f32> {
    // FNV-1a, then xorshift64*: deterministic, and good enough to tell inputs apart.
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let n = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (n >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        values.iter_mut().for_each(|x| *x /= norm);
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embeddings(body: &str) -> Value {
        serde_json::from_slice(&answer("m", 8, body.as_bytes()).expect("an answer")).expect("JSON")
    }

    #[test]
    fn a_request_for_too_many_numbers_is_refused() {
        let inputs = vec!["\"a\""; 17].join(",");
        let body = format!(r#"{{"input":[{inputs}],"dimensions":65536}}"#);
        let error = answer("m", 8, body.as_bytes()).expect_err("17 x 65,536 > the bound");
        assert_eq!(error.param(), Some("dimensions"));
    }

    #[test]
    fn same_input_same_unit_vector_of_the_asked_size() {
        let a = embeddings(r#"{"input":["one two","three"]}"#);
        let b = embeddings(r#"{"input":"one two","dimensions":4}"#);
        assert_eq!(a["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(a["usage"]["prompt_tokens"], 3);
        let first: Vec<f64> =
            serde_json::from_value(a["data"][0]["embedding"].clone()).expect("floats");
        assert_eq!(first.len(), 8);
        let norm: f64 = first.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit length: {norm}");
        assert_ne!(a["data"][0]["embedding"], a["data"][1]["embedding"]);
        assert_eq!(b["data"][0]["embedding"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            embeddings(r#"{"input":"one two"}"#)["data"][0],
            a["data"][0]
        );
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let floats = embeddings(r#"{"input":"x"}"#);
        let packed = embeddings(r#"{"input":"x","encoding_format":"base64"}"#);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(packed["data"][0]["embedding"].as_str().expect("a string"))
            .expect("base64");
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let expected: Vec<f32> =
            serde_json::from_value(floats["data"][0]["embedding"].clone()).expect("floats");
        assert_eq!(decoded, expected);
    }
}
