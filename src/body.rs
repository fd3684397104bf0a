//! The response body type every handler returns, and constructors for fixed bodies.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};

/// A response body: fixed bytes or a pulled stream. Errors never travel inside it; a failure
/// after the first byte is rendered as a final SSE event by the stream itself.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A body that hyper pulls from `stream` only when the client socket can take more.
pub fn streamed(stream: impl Stream<Item = Bytes> + Send + 'static) -> Body {
    StreamBody::new(stream.map(|bytes| Ok(Frame::data(bytes)))).boxed_unsync()
}
