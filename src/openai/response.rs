//! Non-streaming completion body: model alias restored, usage read, in-band errors surfaced.

use bytes::{Bytes, BytesMut};

use super::sanitize::in_band_error;
use super::usage::Usage;
use super::view::ObjectView;
use crate::error::GatewayError;

/// Rewrites an upstream `chat.completion` (or embeddings, or legacy completion) object for the
/// client.
pub fn rewrite_completion(
    body: &[u8],
    model: &str,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    rewrite(body, model, |view| view.usage())
}

/// Rewrites an upstream `response` object (the Responses API's, whose usage has its own names)
/// for the client.
pub fn rewrite_response(body: &[u8], model: &str) -> Result<(Bytes, Option<Usage>), GatewayError> {
    rewrite(body, model, |view| view.responses_usage())
}

fn rewrite(
    body: &[u8],
    model: &str,
    usage: fn(&ObjectView<'_>) -> Option<Usage>,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    let view = ObjectView::parse(body).map_err(|_| GatewayError::UpstreamProtocol {
        detail: "the response body is not a JSON object",
    })?;
    if let Some(error) = view.error() {
        return Err(in_band_error(error.as_bytes()));
    }
    let model_json = serde_json::to_vec(model).expect("invariant: a string serialises");
    let mut out = BytesMut::new();
    view.put_rewritten(body, &model_json, false, &mut out);
    Ok((out.freeze(), usage(&view)))
}
