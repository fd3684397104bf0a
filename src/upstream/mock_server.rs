//! `sluicegate mock-upstream`: the mock backend served over HTTP, as an OpenAI-compatible
//! server for benchmarks, compose files and manual testing.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::Call;
use super::mock::MockBackend;
use crate::body::{Body, full, streamed};
use crate::config::{Api, MockConfig};
use crate::openai::responses::ResponseId;

/// Largest request body the mock reads.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Serves the mock on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    script: MockConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let backend = std::sync::Arc::new(MockBackend::new(script, "mock-model"));
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        let service = service_fn(move |request| {
            let backend = backend.clone();
            async move { Ok::<_, Infallible>(answer(request, &backend).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        #[expect(
            clippy::disallowed_methods,
            reason = "a mock connection outlives the accept loop iteration"
        )]
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn answer(request: Request<Incoming>, backend: &MockBackend) -> Response<Body> {
    let Some(call) = call_of(request.method(), request.uri().path()) else {
        return plain(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#,
        );
    };
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                r#"{"error":{"message":"bad body","type":"invalid_request_error","param":null,"code":null}}"#,
            );
        }
    };
    let is_stream =
        serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["stream"] == true);
    let (status, chunks) = match backend.respond(&call, &body) {
        Ok(chunks) => (StatusCode::OK, chunks),
        Err(refusal) => (
            refusal.status,
            Box::pin(futures_util::stream::once(async move { Ok(refusal.body) }))
                as crate::upstream::ByteStream,
        ),
    };
    let content_type = if is_stream && status == StatusCode::OK {
        "text/event-stream"
    } else {
        "application/json"
    };
    let stream = futures_util::StreamExt::filter_map(chunks, |c| async move { c.ok() });
    let mut response = Response::new(streamed(stream));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The call a method and path make, under any base path: `POST .../chat/completions`,
/// `GET .../responses/{id}`, and so on.
fn call_of(method: &Method, path: &str) -> Option<Call> {
    if let Some((_, rest)) = path.rsplit_once("/responses/") {
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let id = ResponseId::parse(id)?;
        return match (method, action) {
            (&Method::GET, "") => Some(Call::Retrieve(id)),
            (&Method::DELETE, "") => Some(Call::Delete(id)),
            (&Method::POST, "cancel") => Some(Call::Cancel(id)),
            (&Method::GET, "input_items") => Some(Call::InputItems(id)),
            _ => None,
        };
    }
    let api = [Api::Chat, Api::Responses, Api::Embeddings, Api::Completions]
        .into_iter()
        .find(|api| path.ends_with(&format!("/{}", api.path())))?;
    (method == Method::POST).then_some(Call::Create(api))
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
