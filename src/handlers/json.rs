//! JSON and SSE response shapes shared by the handlers.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};

use crate::body::{Body, full};

/// Room for every header an answer ends up with (its own, the rate-limit headers, the backend,
/// the request id), so adding them never grows the map.
const ANSWER_HEADERS: usize = 16;

/// A response with room for an answer's headers.
fn answer(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.headers_mut() = HeaderMap::with_capacity(ANSWER_HEADERS);
    response
}

/// A 200 JSON response.
pub fn json_response(body: impl Into<Bytes>) -> Response<Body> {
    let mut response = answer(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A 200 event-stream response. No content-length: the body is streamed.
pub fn sse_response(body: Body) -> Response<Body> {
    let mut response = answer(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
