//! JSON and SSE response shapes shared by the handlers.

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::body::{Body, full};

/// A 200 JSON response.
pub fn json_response(body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 event-stream response. No content-length: the body is streamed.
pub fn sse_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
