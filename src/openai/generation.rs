//! What the generating endpoints share (chat completions and the legacy text completions): one
//! pipeline, one relay and one chunk rewrite serve both, asking the request only this.

use bytes::Bytes;

use super::tokens::TokenCounter;
use crate::config::{Api, Dialect};
use crate::error::GatewayError;

/// A validated request for generated output, as the generating handler needs it.
pub trait Generation: Sized + Send + Sync + 'static {
    /// The API it calls upstream.
    const API: Api;

    /// Parses and validates a request body; a 400 names the offending `param`.
    fn parse(body: &[u8]) -> Result<Self, GatewayError>;

    /// The client-facing model name.
    fn model(&self) -> &str;

    fn stream(&self) -> bool;

    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    fn include_usage(&self) -> bool;

    /// The output cap the client asked for, when it did.
    fn max_output_tokens(&self) -> Option<u64>;

    /// How many outputs one request generates (and so is reserved for).
    fn choices(&self) -> u64;

    /// The prompt's tokens, estimated erring high.
    fn prompt_tokens_estimate(&self) -> u64;

    /// The most prompt tokens an upstream report is believed for, given the `estimate`.
    fn prompt_tokens_ceiling(&self, estimate: u64) -> u64;

    /// The prompt's tokens counted with the model's tokenizer (for when no usage is reported).
    fn prompt_tokens_counted(&self, counter: TokenCounter) -> u64;

    /// The body sent upstream: the backend's model, the output cap written, usage asked for.
    fn upstream_body(&self, upstream_model: &str, output_cap: u64) -> Bytes;

    /// The body for a backend that speaks `dialect` (it differs from `upstream_body` only for
    /// a dialect the request is translated to).
    fn body_for(&self, dialect: &Dialect, upstream_model: &str, output_cap: u64) -> Bytes {
        let _ = dialect;
        self.upstream_body(upstream_model, output_cap)
    }

    /// Why a backend that needs the request translated cannot take it (`None`: it can). Asked
    /// only when such a backend is on the request's route.
    fn untranslatable(&self) -> Option<GatewayError> {
        None
    }

    /// Whether sending it twice costs only the work.
    fn is_safe_to_duplicate(&self) -> bool;

    /// Counts the prompt of a kept request body (`None` when it no longer parses).
    fn count_prompt(body: &[u8], counter: TokenCounter) -> Option<u64> {
        Self::parse(body)
            .ok()
            .map(|request| request.prompt_tokens_counted(counter))
    }
}
