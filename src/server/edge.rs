//! The layers every API response passes through on its way out: CORS for the configured
//! browser origins (preflights answered here, before any key is asked for) and gzip of
//! non-streamed answers for clients that accept it (never for `text/event-stream`, whose bytes
//! must leave as they come). Not brotli: hyper keeps a slot the size of the response body type
//! for each connection's life, and brotli's encoder state inside it costs about 6 KiB per open
//! stream.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Request};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_http::CompressionLevel;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};

use crate::config::CorsConfig;
use crate::routes;
use crate::state::AppState;

/// Response headers a browser page may read.
const EXPOSED: [&str; 12] = [
    "x-request-id",
    "openai-processing-ms",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-sluicegate-backend",
    "traceparent",
];

/// The CORS layer of `config`, built once at start and cloned for each connection.
pub fn cors(config: Option<&CorsConfig>) -> Option<CorsLayer> {
    config.map(cors_layer)
}

/// The service for one connection from `peer`.
pub fn service(
    state: Arc<AppState>,
    peer: SocketAddr,
    cors: Option<CorsLayer>,
) -> TowerToHyperService<
    impl tower::Service<
        Request<Incoming>,
        Response = http::Response<
            impl http_body::Body<Data = bytes::Bytes, Error = impl Into<tower::BoxError>>
            + Send
            + 'static,
        >,
        Error = tower::BoxError,
        Future = impl Send,
    > + Clone,
> {
    let handler = tower::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, tower::BoxError>(routes::handle(request, state, peer).await) }
    });
    TowerToHyperService::new(
        ServiceBuilder::new()
            // Boxed: hyper keeps an allocation the size of the service's future for the
            // connection's whole life; the handler's large future lives in a box of its own,
            // freed once the response head is ready, so an open stream does not keep it.
            .map_future(Box::pin)
            .layer(
                CompressionLayer::new()
                    .quality(CompressionLevel::Fastest)
                    .no_deflate()
                    .no_zstd(),
            )
            .option_layer(cors)
            .service(handler),
    )
}

fn cors_layer(config: &CorsConfig) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        // The SDKs send their own headers (`x-stainless-*`, `openai-*`); the origin list is
        // what restricts who may call.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(EXPOSED.map(HeaderName::from_static))
        .max_age(config.max_age);
    let layer = match &config.allowed_origins {
        None => layer.allow_origin(Any),
        Some(origins) => layer.allow_origin(AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )),
    };
    layer.allow_credentials(config.allow_credentials)
}
