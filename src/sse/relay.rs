//! The pull-based relay: upstream bytes -> decoder -> [`Rewrite`] -> client bytes.
//!
//! The relay is a `Stream` that does work only when its consumer (hyper, writing to the client
//! socket) polls it, and it polls the upstream only when it needs more bytes. A slow client
//! therefore slows the upstream read instead of growing a buffer. Dropping the stream drops the
//! upstream, which closes its connection. Before the first forwarded event it sends comment
//! heartbeats; every wait is bounded by the first-byte, idle or total deadline.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use super::decoder::{DecodeError, Decoder, Event};
use super::encoder::HEARTBEAT;
use crate::telemetry::metrics;

/// What the caller did with one upstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It appended bytes to forward; the first `Send` is the commit point of the response.
    Send,
    /// It forwards nothing for this event.
    Skip,
    /// It appended its last bytes: the upstream said it is done, the stream ends.
    Finish,
}

/// Turns upstream events into client bytes. Knows the payload format; the relay does not.
pub trait Rewrite: Send + 'static {
    type Error: From<RelayError> + Send + 'static;

    /// Appends what `event` becomes for the client to `out` (nothing on `Skip` or an error).
    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, Self::Error>;
}

/// Failures the relay itself detects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    #[error("no first event before the first-byte deadline")]
    FirstByteTimeout,
    #[error("no bytes within the idle timeout")]
    IdleTimeout,
    #[error("the total deadline passed")]
    TotalTimeout,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the upstream ended the stream without finishing it")]
    UpstreamEnded,
    #[error("the gateway is shutting down")]
    Stopped,
}

/// Deadlines and limits of one relayed stream.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    pub heartbeat_interval: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// The request's total deadline, shared with anything spent before the relay started.
    pub deadline: Instant,
    pub max_event_bytes: usize,
}

/// Relays the upstream that `connect` (boxed by the caller: it is large) resolves to, with the
/// rewrite that comes with it (chosen by the backend that answered). Yields bytes for the
/// client; an `Err` is always the last item, and the caller renders it (as a response before
/// any byte went out, as a final event after). `stop` resolving ends the stream with
/// [`RelayError::Stopped`].
pub fn relay<C, S, R>(
    connect: C,
    options: RelayOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, R::Error>> + Send + 'static
where
    C: Future<Output = Result<(S, R), R::Error>> + Send + Unpin + 'static,
    S: Stream<Item = Result<Bytes, R::Error>> + Send + Unpin + 'static,
    R: Rewrite,
{
    async_stream::stream! {
        let started = Instant::now();
        // Before the upstream answered, the connect future bounds its own attempts; the
        // first-byte deadline starts when the response head arrived.
        let mut first_byte_at: Option<Instant> = None;
        let mut heartbeat = interval_at(started + options.heartbeat_interval, options.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stop = pin!(stop.fuse());
        // Dropped once resolved: it holds every attempt (the caller boxes it, so only a pointer
        // moves), and an open stream should not keep that much memory for the rest of its life.
        let mut connect = Some(connect);
        let mut timer = pin!(sleep_until(options.deadline));
        let mut decoder = Decoder::new(options.max_event_bytes);
        let mut upstream: Option<S> = None;
        let mut rewrite: Option<R> = None;
        let mut committed = false;
        loop {
            // Every event one read brought leaves as one frame: one buffer, one chunk to the
            // client, however many events a fast backend packed into its write.
            let mut out = BytesMut::new();
            let ending = loop {
                // No bytes, so no events, before the upstream (and its rewrite) arrived.
                let Some(rewrite) = rewrite.as_mut() else {
                    break None;
                };
                let step = match decoder.next_event() {
                    Ok(Some(event)) => rewrite.on_event(event, &mut out),
                    Ok(None) => break None,
                    Err(e) => Err(RelayError::Decode(e).into()),
                };
                match step {
                    Ok(Step::Send) => committed = true,
                    Ok(Step::Skip) => {}
                    Ok(Step::Finish) => break Some(Ok(())),
                    Err(e) => break Some(Err(e)),
                }
            };
            if !out.is_empty() {
                yield Ok(out.freeze());
            }
            match ending {
                None => {}
                Some(Ok(())) => return,
                Some(Err(e)) => {
                    yield Err(e);
                    return;
                }
            }
            let (wait_until, on_timeout) = next_deadline(committed, first_byte_at, &options);
            timer.as_mut().reset(wait_until);
            let wake = tokio::select! {
                biased;
                () = &mut stop => Wake::Fail(RelayError::Stopped.into()),
                connected = resolve(&mut connect), if connect.is_some() => match connected {
                    Ok((stream, chosen)) => Wake::Connected(stream, chosen),
                    Err(e) => Wake::Fail(e),
                },
                chunk = next_chunk(&mut upstream) => match chunk {
                    Some(Ok(bytes)) => Wake::Bytes(bytes),
                    Some(Err(e)) => Wake::Fail(e),
                    None => Wake::Fail(RelayError::UpstreamEnded.into()),
                },
                () = &mut timer => Wake::Fail(on_timeout.into()),
                _ = heartbeat.tick(), if !committed => Wake::Heartbeat,
            };
            match wake {
                Wake::Connected(stream, chosen) => {
                    connect = None;
                    first_byte_at = Some(Instant::now() + options.first_byte_timeout);
                    upstream = Some(stream);
                    rewrite = Some(chosen);
                }
                Wake::Bytes(bytes) => decoder.feed(&bytes),
                Wake::Heartbeat => {
                    metrics::record_heartbeat();
                    yield Ok(HEARTBEAT);
                }
                Wake::Fail(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
    }
}

enum Wake<S, R, E> {
    Connected(S, R),
    Bytes(Bytes),
    Heartbeat,
    Fail(E),
}

/// The next instant the relay gives up at, and the error it then reports.
fn next_deadline(
    committed: bool,
    first_byte_at: Option<Instant>,
    options: &RelayOptions,
) -> (Instant, RelayError) {
    let (phase_end, phase_error) = match (committed, first_byte_at) {
        (true, _) => (
            Instant::now() + options.idle_timeout,
            RelayError::IdleTimeout,
        ),
        (false, Some(at)) => (at, RelayError::FirstByteTimeout),
        (false, None) => (options.deadline, RelayError::TotalTimeout),
    };
    if phase_end <= options.deadline {
        (phase_end, phase_error)
    } else {
        (options.deadline, RelayError::TotalTimeout)
    }
}

async fn resolve<F: Future + Unpin>(pending: &mut Option<F>) -> F::Output {
    match pending {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn next_chunk<S: Stream + Unpin>(upstream: &mut Option<S>) -> Option<S::Item> {
    match upstream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// Forwards each event's data verbatim and finishes on `[DONE]`.
    struct Echo;

    impl Rewrite for Echo {
        type Error = RelayError;

        fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, RelayError> {
            if &event.data[..] == b"[DONE]" {
                out.extend_from_slice(b"done");
                return Ok(Step::Finish);
            }
            out.extend_from_slice(&event.data);
            Ok(Step::Send)
        }
    }

    fn options() -> RelayOptions {
        RelayOptions {
            heartbeat_interval: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3),
            deadline: Instant::now() + Duration::from_secs(60),
            max_event_bytes: 1024,
        }
    }

    type Chunks = stream::Iter<std::vec::IntoIter<Result<Bytes, RelayError>>>;

    fn chunks(parts: &[&'static str]) -> Chunks {
        let items: Vec<_> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        stream::iter(items)
    }

    async fn collect<S: Stream<Item = Result<Bytes, RelayError>>>(
        s: S,
    ) -> Vec<Result<String, RelayError>> {
        s.map(|item| item.map(|b| String::from_utf8(b.to_vec()).expect("utf-8")))
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn forwards_events_and_ends_at_finish() {
        let upstream = chunks(&["data: a\n\nda", "ta: b\n\ndata: [DONE]\n\ndata: after\n\n"]);
        let out = collect(relay(
            Box::pin(async { Ok((upstream, Echo)) }),
            options(),
            std::future::pending(),
        ))
        .await;
        assert_eq!(
            out,
            [Ok("a".into()), Ok("bdone".into())],
            "the events of one read leave together"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_until_the_upstream_connects_then_first_byte_timeout() {
        let connect = async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok((stream::pending::<Result<Bytes, RelayError>>(), Echo))
        };
        let out = collect(relay(Box::pin(connect), options(), std::future::pending())).await;
        let beats = out
            .iter()
            .filter(|i| matches!(i, Ok(s) if s == ": keep-alive\n\n"))
            .count();
        assert_eq!(
            beats, 12,
            "one a second until 10 s after the upstream answered at 2.5 s"
        );
        assert_eq!(out.last(), Some(&Err(RelayError::FirstByteTimeout)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_after_the_first_event() {
        let upstream = chunks(&["data: a\n\n"]).chain(stream::pending());
        let started = Instant::now();
        let out = collect(relay(
            Box::pin(async { Ok((upstream, Echo)) }),
            options(),
            std::future::pending(),
        ))
        .await;
        assert_eq!(out, [Ok("a".into()), Err(RelayError::IdleTimeout)]);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "idle timeout measured from the last chunk"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn total_deadline_beats_a_longer_phase_timeout() {
        let mut opts = options();
        opts.deadline = Instant::now() + Duration::from_millis(1500);
        let upstream = chunks(&["data: a\n\n"]).chain(stream::pending());
        let out = collect(relay(
            Box::pin(async { Ok((upstream, Echo)) }),
            opts,
            std::future::pending(),
        ))
        .await;
        assert_eq!(out, [Ok("a".into()), Err(RelayError::TotalTimeout)]);
    }

    #[tokio::test(start_paused = true)]
    async fn eof_without_finish_is_an_error_and_stop_ends_the_stream() {
        let out = collect(relay(
            Box::pin(async { Ok((chunks(&["data: a\n\n"]), Echo)) }),
            options(),
            std::future::pending(),
        ))
        .await;
        assert_eq!(out, [Ok("a".into()), Err(RelayError::UpstreamEnded)]);

        let stop = tokio::time::sleep(Duration::from_millis(500));
        let upstream = chunks(&["data: a\n\n"]).chain(stream::pending());
        let out = collect(relay(
            Box::pin(async { Ok((upstream, Echo)) }),
            options(),
            stop,
        ))
        .await;
        assert_eq!(out, [Ok("a".into()), Err(RelayError::Stopped)]);
    }
}
