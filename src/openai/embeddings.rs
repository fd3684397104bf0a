//! `EmbeddingsRequest`: a `/v1/embeddings` body, parsed and validated so a 400 names its
//! `param`. As with chat, the whole object is kept and unknown fields pass through.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::fields::wrong_type;
use super::request::{DESTINATION_FIELDS, bounded_integer, model};
use super::texts;
use super::tokens::TokenCounter;
use crate::error::GatewayError;

/// The largest `dimensions` accepted.
pub const MAX_DIMENSIONS: u64 = 1 << 16;

/// A validated embeddings request.
#[derive(Debug)]
pub struct EmbeddingsRequest {
    pub model: String,
    /// The prompt estimate: a token per three bytes of text, a token per token id given.
    estimate: u64,
    /// The size of the body as the client sent it.
    body_bytes: usize,
    fields: Map<String, Value>,
}

impl EmbeddingsRequest {
    pub fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let fields = super::request::object(body)?;
        let model = model(&fields)?;
        let estimate = texts::check(&fields, "input")?;
        match fields.get("encoding_format") {
            None | Some(Value::Null) => {}
            Some(Value::String(format)) if matches!(format.as_str(), "float" | "base64") => {}
            Some(Value::String(_)) => {
                return Err(GatewayError::invalid(
                    "encoding_format",
                    "invalid_value",
                    "'encoding_format' must be 'float' or 'base64'",
                ));
            }
            Some(other) => return Err(wrong_type("encoding_format", "a string", other)),
        }
        bounded_integer(&fields, "dimensions", MAX_DIMENSIONS)?;
        if let Some(user) = fields
            .get("user")
            .filter(|v| !v.is_null() && !v.is_string())
        {
            return Err(wrong_type("user", "a string", user));
        }
        Ok(Self {
            model,
            estimate,
            body_bytes: body.len(),
            fields,
        })
    }

    /// What the input is reserved as, erring high (as for chat prompts).
    pub fn prompt_tokens_estimate(&self) -> u64 {
        self.estimate
    }

    /// The input's tokens counted with the model's tokenizer (for when the upstream reports
    /// none): text exactly within the counter's budget, token ids one each.
    pub fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64 {
        texts::count(self.fields.get("input"), counter)
    }

    /// The most an upstream report of the input's tokens is believed: three times the
    /// estimate, and at least the body's size (a token is at least a byte of text).
    pub fn prompt_tokens_ceiling(&self) -> u64 {
        self.estimate.saturating_mul(3).max(self.body_bytes as u64)
    }

    /// The body sent upstream: the client's object with `model` replaced and destination
    /// fields removed.
    pub fn upstream_body(&self, upstream_model: &str) -> Bytes {
        let mut fields = self.fields.clone();
        fields.retain(|key, _| !DESTINATION_FIELDS.contains(&key.as_str()));
        fields.insert("model".into(), Value::String(upstream_model.into()));
        serde_json::to_vec(&fields)
            .expect("invariant: a parsed JSON object serialises")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<EmbeddingsRequest, String> {
        EmbeddingsRequest::parse(body.as_bytes()).map_err(|e| {
            let param = e.param().unwrap_or_default();
            format!("{param}: {e}")
        })
    }

    #[test]
    fn every_input_shape_is_accepted_and_estimated() {
        let rows = [
            (r#"{"model":"m","input":"hello world"}"#, 4),
            (r#"{"model":"m","input":["abc","abcdef"]}"#, 3),
            (r#"{"model":"m","input":[1,2,3]}"#, 3),
            (
                r#"{"model":"m","input":[[1,2],[3]],"encoding_format":"base64","dimensions":256}"#,
                3,
            ),
        ];
        for (body, estimate) in rows {
            let request = parse(body).expect(body);
            assert_eq!(request.prompt_tokens_estimate(), estimate, "{body}");
        }
    }

    #[test]
    fn bad_requests_name_their_param() {
        let rows = [
            (r#"{"input":"x"}"#, "model: "),
            (r#"{"model":"m"}"#, "input: "),
            (r#"{"model":"m","input":""}"#, "input: "),
            (r#"{"model":"m","input":[]}"#, "input: "),
            (r#"{"model":"m","input":["a",1]}"#, "input: "),
            (r#"{"model":"m","input":[1,-2]}"#, "input: "),
            (r#"{"model":"m","input":[1.5]}"#, "input: "),
            (r#"{"model":"m","input":[[]]}"#, "input: "),
            (r#"{"model":"m","input":{"a":1}}"#, "input: "),
            (
                r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
                "encoding_format: ",
            ),
            (
                r#"{"model":"m","input":"x","dimensions":0}"#,
                "dimensions: ",
            ),
            (
                r#"{"model":"m","input":"x","dimensions":"8"}"#,
                "dimensions: ",
            ),
            (r#"{"model":"m","input":"x","user":7}"#, "user: "),
            (r#"[1]"#, ": "),
        ];
        for (body, prefix) in rows {
            let error = parse(body).expect_err(body);
            assert!(error.starts_with(prefix), "{body}: {error}");
        }
        let many = format!(
            r#"{{"model":"m","input":[{}]}}"#,
            vec!["\"a\""; texts::MAX_ITEMS + 1].join(",")
        );
        assert!(parse(&many).expect_err("too many").contains("at most 2048"));
    }

    #[test]
    fn the_input_is_counted_with_the_tokenizer() {
        let counter = TokenCounter::new(crate::config::Tokenizer::O200kBase);
        let request = parse(r#"{"model":"m","input":["hello world","hello"]}"#).expect("valid");
        assert_eq!(request.prompt_tokens_counted(counter), 2 + 1);
        let request = parse(r#"{"model":"m","input":[[1,2,3],[4]]}"#).expect("valid");
        assert_eq!(request.prompt_tokens_counted(counter), 4);
    }

    #[test]
    fn the_upstream_body_names_the_backends_model_and_drops_destinations() {
        let request =
            parse(r#"{"model":"alias","input":"x","api_base":"http://evil","x_extra":1}"#)
                .expect("valid");
        let sent: Value = serde_json::from_slice(&request.upstream_body("real")).expect("JSON");
        assert_eq!(
            sent,
            serde_json::json!({"model": "real", "input": "x", "x_extra": 1})
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::cases;

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
                let _ = EmbeddingsRequest::parse(&body);
            }
        }
    }
}
