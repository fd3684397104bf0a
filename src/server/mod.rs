//! The accept loop: each connection is served as HTTP/1.1 or h2c (told by a peek at its first
//! bytes, `sniff`), with a header read timeout, bounded buffers, TCP_NODELAY and a client-stall
//! timeout; graceful shutdown drains open requests for `shutdown_grace`, then tells open streams
//! to end.

pub mod admission;
mod edge;
mod metrics_listener;
pub mod shutdown;
mod sniff;
mod stall;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::openai::tokens::TokenCounter;
use crate::state::AppState;
use sniff::Protocol;
use stall::StallTimeoutIo;

/// How long streams get to write their final event and close after the grace period.
const FINAL_EVENT_WINDOW: Duration = Duration::from_secs(5);
/// Pause after an accept error (such as EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// How long a metrics connection may take to send a request head, or sit idle between two.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often usage totals are written out.
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between two housekeeping sweeps.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long the spans still queued at shutdown may take to leave.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent streams per HTTP/2 connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Keeps this replica's copy of runtime keys and revocations current.
fn auth_sync(state: &Arc<AppState>) -> AbortOnDrop {
    let state = state.clone();
    #[expect(
        clippy::disallowed_methods,
        reason = "runs for the server's lifetime and is aborted when it stops; a sync only reads"
    )]
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(crate::auth::store::SYNC_EVERY);
        loop {
            ticks.tick().await;
            state.auth.sync().await;
        }
    });
    AbortOnDrop(task)
}

/// Loads the models' tokenizers off the runtime's threads (a tenth of a second each in a
/// release build); `/readyz` says `warming` until they are in.
fn warm_tokenizers(state: &Arc<AppState>) {
    let state = state.clone();
    drop(tokio::task::spawn_blocking(move || {
        for tokenizer in state.models.tokenizers() {
            TokenCounter::new(tokenizer).warm();
        }
        state.tokenizers_warm.store(true, Ordering::Relaxed);
    }));
}

/// Serves `listener` (and `metrics` apart, when given) until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    #[expect(
        clippy::disallowed_methods,
        reason = "the metrics listener runs for the server's lifetime and is aborted when it stops"
    )]
    let metrics = metrics.map(|listener| {
        AbortOnDrop(tokio::spawn(metrics_listener::serve(
            listener,
            state.clone(),
        )))
    });
    state.limiter.start().await;
    state.auth.sync().await;
    let auth_sync = auth_sync(&state);
    warm_tokenizers(&state);
    let housekeeping = Housekeeping::start(&state);
    let usage_flusher = UsageFlusher::start(&state);
    let builders = Arc::new(connection_builders(&state));
    let cors = edge::cors(state.server.cors.as_ref());
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (state, builders, cors) = (state.clone(), builders.clone(), cors.clone());
        #[expect(
            clippy::disallowed_methods,
            reason = "a connection outlives the accept loop iteration; GracefulShutdown tracks it"
        )]
        tokio::spawn(async move {
            // A connection that has said nothing when the drain begins is closed, as hyper
            // closes an idle one; the drain does not wait out its header timeout.
            let header_timeout = state.server.header_read_timeout;
            let told = tokio::select! {
                told = sniff::protocol(&stream, header_timeout) => told,
                () = state.drain.began() => None,
            };
            let Some(protocol) = told else {
                return;
            };
            let io = TokioIo::new(StallTimeoutIo::new(
                stream,
                state.stream.client_stall_timeout,
            ));
            let service = edge::service(state, peer, cors);
            let builder = match protocol {
                Protocol::Http1 => &builders.0,
                Protocol::Http2 => &builders.1,
            };
            let _ = watcher
                .watch(builder.serve_connection(io, service).into_owned())
                .await;
        });
    }
    drop(listener);
    drop(housekeeping);
    drop(auth_sync);
    drop(metrics);
    state.drain.begin();
    tracing::info!(grace = ?state.server.shutdown_grace, "draining");
    drain(graceful, &state).await;
    usage_flusher.finish().await;
    state.limiter.finish_settling().await;
    if let Some(tracing) = state.tracing.clone() {
        // Exporting blocks on the collector (bounded by its timeout): off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown(TRACE_FLUSH_TIMEOUT)).await;
    }
    Ok(())
}

/// A background task that stops when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Once a second (or each `pool_idle_timeout`, when shorter): closes backends' idle pooled
/// connections past that age, so a quiet gateway does not hold sockets its backends already
/// closed, cuts streams whose clients stopped reading, re-reads a changed JWKS file, and runs
/// the metrics exporter's upkeep.
/// Stops when dropped.
struct Housekeeping;

impl Housekeeping {
    fn start(state: &Arc<AppState>) -> AbortOnDrop {
        let state = state.clone();
        let every = state.upstream.pool_idle_timeout.min(REAP_EVERY);
        #[expect(
            clippy::disallowed_methods,
            reason = "housekeeping runs for the server's lifetime and is aborted when it stops"
        )]
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                state.models.reap_idle_connections();
                state.stalls.sweep();
                state.auth.upkeep();
                if state.metrics {
                    crate::telemetry::metrics::upkeep();
                }
            }
        });
        AbortOnDrop(task)
    }
}

/// Writes the usage totals out every second, and a last time when the server stops. Never
/// aborted mid-write: a flush holds deltas that exist nowhere else.
struct UsageFlusher {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl UsageFlusher {
    fn start(state: &Arc<AppState>) -> Self {
        let state = state.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "runs for the server's lifetime; `finish` ends it after a last flush"
        )]
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(USAGE_FLUSH_EVERY);
            let mut stopping = std::pin::pin!(stopped.notified());
            loop {
                tokio::select! {
                    _ = ticks.tick() => state.usage.flush().await,
                    () = &mut stopping => break,
                }
            }
            state.usage.flush().await;
            let unwritten = state.usage.unwritten();
            if unwritten > 0 {
                tracing::error!(
                    keys = unwritten,
                    "usage totals could not be written before shutdown; they are lost"
                );
            }
        });
        Self { stop, task }
    }

    async fn finish(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

async fn drain(graceful: GracefulShutdown, state: &AppState) {
    let mut all_closed = pin!(graceful.shutdown());
    tokio::select! {
        () = &mut all_closed => {}
        () = tokio::time::sleep(state.server.shutdown_grace) => {
            state.drain.expire();
            if tokio::time::timeout(FINAL_EVENT_WINDOW, all_closed).await.is_err() {
                tracing::warn!("connections still open after the grace period; closing");
            }
        }
    }
}

/// The HTTP/1.1 and the HTTP/2 builder: a connection's first bytes pick one (`sniff`).
fn connection_builders(
    state: &AppState,
) -> (auto::Builder<TokioExecutor>, auto::Builder<TokioExecutor>) {
    let server = &state.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(server.keep_alive)
        .max_buf_size(server.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    (builder.clone().http1_only(), builder.http2_only())
}
