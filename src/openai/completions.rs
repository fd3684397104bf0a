//! `CompletionRequest`: a legacy `/v1/completions` body, parsed and validated so a 400 names
//! its `param`. The whole object is kept; unknown fields pass through.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::fields::wrong_type;
use super::generation::Generation;
use super::request::{
    MAX_CHOICES, MAX_OUTPUT_TOKENS, bounded_integer, model, object, optional_bool, stream_options,
    upstream_body,
};
use super::texts;
use super::tokens::TokenCounter;
use crate::config::Api;
use crate::error::GatewayError;

/// What OpenAI generates when a legacy request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 16;
/// The largest `best_of` accepted, as OpenAI bounds it.
const MAX_BEST_OF: u64 = 20;
/// The largest `logprobs` accepted, as OpenAI bounds it.
const MAX_LOGPROBS: u64 = 5;

/// A validated legacy completion request.
#[derive(Debug)]
pub struct CompletionRequest {
    model: String,
    stream: bool,
    include_usage: bool,
    max_tokens: u64,
    /// Completions generated: the larger of `n` and `best_of`.
    choices: u64,
    estimate: u64,
    body_bytes: usize,
    fields: Map<String, Value>,
}

impl Generation for CompletionRequest {
    const API: Api = Api::Completions;

    fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let fields = object(body)?;
        let model = model(&fields)?;
        let estimate = texts::check(&fields, "prompt")?;
        let stream = optional_bool(&fields, "stream")?.unwrap_or(false);
        let include_usage = stream_options(&fields, stream)?;
        if fields
            .get("max_completion_tokens")
            .is_some_and(|v| !v.is_null())
        {
            // The legacy API caps output with `max_tokens` only; a backend that knows only that
            // would ignore this one, and generate past what was reserved.
            return Err(GatewayError::invalid(
                "max_completion_tokens",
                "unsupported_parameter",
                "'max_completion_tokens' is not a parameter of /v1/completions; use 'max_tokens'",
            ));
        }
        optional_bool(&fields, "echo")?;
        if let Some(suffix) = fields
            .get("suffix")
            .filter(|v| !v.is_null() && !v.is_string())
        {
            return Err(wrong_type("suffix", "a string", suffix));
        }
        if let Some(Value::Number(n)) = fields.get("logprobs")
            && n.as_u64().is_some_and(|n| n > MAX_LOGPROBS)
        {
            return Err(GatewayError::invalid(
                "logprobs",
                "integer_above_max_value",
                format!("'logprobs' must be at most {MAX_LOGPROBS}"),
            ));
        }
        let n = bounded_integer(&fields, "n", MAX_CHOICES)?.unwrap_or(1);
        let best_of = bounded_integer(&fields, "best_of", MAX_BEST_OF)?.unwrap_or(1);
        Ok(Self {
            model,
            stream,
            include_usage,
            max_tokens: bounded_integer(&fields, "max_tokens", MAX_OUTPUT_TOKENS)?
                .unwrap_or(DEFAULT_MAX_TOKENS),
            choices: n.max(best_of),
            estimate,
            body_bytes: body.len(),
            fields,
        })
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

    /// Always set: OpenAI's own default (16) when the client gave none, so a backend is told
    /// what OpenAI would have generated, not the tier's larger default.
    fn max_output_tokens(&self) -> Option<u64> {
        Some(self.max_tokens)
    }

    fn choices(&self) -> u64 {
        self.choices
    }

    fn prompt_tokens_estimate(&self) -> u64 {
        self.estimate
    }

    fn prompt_tokens_ceiling(&self, estimate: u64) -> u64 {
        estimate.saturating_mul(3).max(self.body_bytes as u64)
    }

    fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64 {
        texts::count(self.fields.get("prompt"), counter)
    }

    fn upstream_body(&self, upstream_model: &str, output_cap: u64) -> Bytes {
        upstream_body(&self.fields, self.stream, upstream_model, output_cap)
    }

    /// The legacy API stores nothing.
    fn is_safe_to_duplicate(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CompletionRequest, String> {
        CompletionRequest::parse(body.as_bytes()).map_err(|e| {
            let param = e.param().unwrap_or_default();
            format!("{param}: {e}")
        })
    }

    #[test]
    fn prompts_caps_and_choices() {
        let request = parse(r#"{"model":"m","prompt":"Say this is a test"}"#).expect("valid");
        assert_eq!(request.prompt_tokens_estimate(), 6);
        assert_eq!(request.max_output_tokens(), Some(16), "OpenAI's default");
        assert_eq!(request.choices(), 1);
        let request = parse(
            r#"{"model":"m","prompt":[[1,2],[3]],"max_tokens":50,"n":2,"best_of":3,"stream":true,
               "stream_options":{"include_usage":true},"echo":true,"logprobs":2,"suffix":"x"}"#,
        )
        .expect("valid");
        assert_eq!(request.prompt_tokens_estimate(), 3);
        assert_eq!(request.max_output_tokens(), Some(50));
        assert_eq!(request.choices(), 3, "best_of completions are generated");
        assert!(request.stream() && request.include_usage());
    }

    #[test]
    fn bad_requests_name_their_param() {
        let rows = [
            (r#"{"model":"m"}"#, "prompt: "),
            (r#"{"model":"m","prompt":[]}"#, "prompt: "),
            (
                r#"{"model":"m","prompt":"x","max_tokens":0}"#,
                "max_tokens: ",
            ),
            (r#"{"model":"m","prompt":"x","best_of":21}"#, "best_of: "),
            (
                r#"{"model":"m","prompt":"x","max_tokens":18446744073709551615}"#,
                "max_tokens: ",
            ),
            (r#"{"model":"m","prompt":"x","n":1e300}"#, "n: "),
            (
                r#"{"model":"m","prompt":"x","logprobs":18446744073709551615}"#,
                "logprobs: ",
            ),
            (r#"{"model":"m","prompt":"x","logprobs":6}"#, "logprobs: "),
            (r#"{"model":"m","prompt":"x","echo":"yes"}"#, "echo: "),
            (r#"{"model":"m","prompt":"x","suffix":1}"#, "suffix: "),
            (
                r#"{"model":"m","prompt":"x","stream_options":{}}"#,
                "stream_options: ",
            ),
        ];
        for (body, prefix) in rows {
            let error = parse(body).expect_err(body);
            assert!(error.starts_with(prefix), "{body}: {error}");
        }
    }

    #[test]
    fn the_upstream_body_carries_the_cap_and_asks_for_usage_when_streaming() {
        let request =
            parse(r#"{"model":"alias","prompt":"x","stream":true,"api_key":"k"}"#).expect("valid");
        let sent: Value = serde_json::from_slice(&request.upstream_body("real", 16)).expect("JSON");
        assert_eq!(
            sent,
            serde_json::json!({"model": "real", "prompt": "x", "stream": true, "max_tokens": 16,
                "stream_options": {"include_usage": true}})
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
                let _ = CompletionRequest::parse(&body);
            }
        }
    }
}
