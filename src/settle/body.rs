//! The response body that carries its request's guard: it counts the bytes it gives hyper,
//! notes when the body ended, and shares itself with the stall watch, which may cut it.
//!
//! Body and guard sit behind one uncontended lock so the watch can take them away (closing the
//! upstream, settling, releasing the permits) while hyper is not polling: that is exactly the
//! case of a client that stopped taking frames.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use super::RequestGuard;
use crate::body::Body;
use crate::error::GatewayError;

/// What the body and the stall watch share.
#[derive(Debug)]
pub struct Guarded {
    slot: Mutex<Slot>,
    /// When the body last handed hyper a frame that hyper has not come back after, in
    /// milliseconds since `epoch` plus one; 0 while hyper is not behind.
    handed_at_ms: AtomicU64,
    epoch: Instant,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per response, already inside its Arc; boxing the live parts would cost an \
              allocation per response to save bytes only after a cut"
)]
enum Slot {
    Live {
        inner: Body,
        guard: RequestGuard,
    },
    /// Cut by the stall watch; the final event, until hyper takes it.
    Cut {
        event: Option<Bytes>,
    },
}

/// The body hyper polls.
#[derive(Debug)]
pub struct GuardedBody {
    shared: Arc<Guarded>,
}

impl GuardedBody {
    pub fn new(inner: Body, guard: RequestGuard) -> (Self, Arc<Guarded>) {
        let shared = Arc::new(Guarded {
            slot: Mutex::new(Slot::Live { inner, guard }),
            handed_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let body = Self {
            shared: shared.clone(),
        };
        (body, shared)
    }
}

impl Guarded {
    /// Cuts the stream when hyper has not come back for a frame it was handed `timeout` ago:
    /// the body is dropped (which closes its upstream) and so is the guard (which settles and
    /// releases the permit); should hyper poll again, it gets a final error event. Returns
    /// whether the stream was cut.
    pub fn cut_if_stalled(&self, timeout: Duration) -> bool {
        let handed_at = self.handed_at_ms.load(Ordering::Acquire);
        let stalled =
            handed_at != 0 && self.now_ms().saturating_sub(handed_at - 1) >= millis(timeout);
        if !stalled {
            return false;
        }
        let error = GatewayError::ClientStalled { timeout };
        let cut = Slot::Cut {
            event: Some(error.to_sse_event()),
        };
        let live = std::mem::replace(&mut *self.lock(), cut);
        if let Slot::Live { inner, guard } = live {
            guard.record_failure(&error);
            drop(inner);
            drop(guard);
        }
        true
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let shared = &self.shared;
        shared.handed_at_ms.store(0, Ordering::Release);
        let mut slot = shared.lock();
        let (inner, guard) = match &mut *slot {
            Slot::Live { inner, guard } => (inner, guard),
            Slot::Cut { event } => {
                return Poll::Ready(event.take().map(|event| Ok(Frame::data(event))));
            }
        };
        let started = Instant::now();
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        guard.busy = guard.busy.saturating_add(started.elapsed());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let sent = frame.data_ref().map_or(0, |d| d.len() as u64);
                guard.bytes_out = guard.bytes_out.saturating_add(sent);
                // hyper stops polling a body that reports its end, so note the end here too.
                if inner.is_end_stream() {
                    guard.completed = true;
                } else {
                    shared
                        .handed_at_ms
                        .store(shared.now_ms().saturating_add(1), Ordering::Release);
                }
            }
            Poll::Ready(None) => guard.completed = true,
            Poll::Ready(Some(Err(never))) => match *never {},
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &*self.shared.lock() {
            Slot::Live { inner, .. } => inner.is_end_stream(),
            Slot::Cut { event } => event.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*self.shared.lock() {
            Slot::Live { inner, .. } => inner.size_hint(),
            Slot::Cut { .. } => SizeHint::default(),
        }
    }
}
