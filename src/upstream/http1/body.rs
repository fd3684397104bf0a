//! The response body as a `Stream` that reads the upstream socket only when polled: no
//! connection task, no channel. Whatever one socket read brings is handed out chunk after chunk
//! in the same poll, so a burst from the backend reaches the client in one write.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::AsyncReadExt;

use super::chunked::{ChunkedDecoder, Decoded};
use super::conn::{Conn, Framing, READ_CHUNK};
use super::idle::IdleConns;
use crate::error::GatewayError;

#[derive(Debug)]
enum Delimiter {
    Chunked(ChunkedDecoder),
    Length(u64),
    UntilClose,
}

/// A streamed response body. Dropping it before the end closes the connection, which is how
/// a client that left stops the backend; read to the end, a keep-alive connection is pooled.
#[derive(Debug)]
pub struct Body {
    conn: Option<Conn>,
    delimiter: Delimiter,
    keep_alive: bool,
    idle: Arc<IdleConns>,
}

impl Body {
    pub fn new(conn: Conn, framing: Framing, keep_alive: bool, idle: Arc<IdleConns>) -> Self {
        let delimiter = match framing {
            Framing::Chunked => Delimiter::Chunked(ChunkedDecoder::default()),
            Framing::Length(n) => Delimiter::Length(n),
            Framing::UntilClose => Delimiter::UntilClose,
        };
        Self {
            conn: Some(conn),
            delimiter,
            keep_alive,
            idle,
        }
    }

    /// Reads the whole body, keeping at most `cap` bytes (the rest is read and dropped).
    pub async fn collect_capped(mut self, cap: usize) -> Result<Bytes, GatewayError> {
        let mut out = BytesMut::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut self).await {
            let chunk = chunk?;
            let room = cap.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok(out.freeze())
    }

    /// The next piece of body already in the buffer, `None` when more must be read.
    fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, GatewayError> {
        let piece = match &mut self.delimiter {
            Delimiter::Chunked(decoder) => match decoder.decode(buf) {
                Ok(Decoded::Data(data)) => Piece::Data(data),
                Ok(Decoded::End) => Piece::End,
                Ok(Decoded::NeedMore) => return Ok(None),
                Err(_) => {
                    return Err(GatewayError::UpstreamProtocol {
                        detail: "malformed chunked encoding",
                    });
                }
            },
            Delimiter::Length(0) => Piece::End,
            Delimiter::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                *remaining -= take as u64;
                Piece::Data(buf.split_to(take).freeze())
            }
            Delimiter::UntilClose if buf.is_empty() => return Ok(None),
            Delimiter::UntilClose => Piece::Data(buf.split().freeze()),
        };
        Ok(Some(piece))
    }

    /// The body ended: pool the connection when it can carry another request.
    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            // An idle connection keeps no buffer either.
            conn.buf = BytesMut::new();
            self.idle.put(conn);
        }
    }
}

enum Piece {
    Data(Bytes),
    End,
}

/// What `Drop` reads, at most, to find a body's terminator: one non-blocking read of this
/// size, never a loop on the socket.
const DROP_READ_BYTES: usize = 1024;

impl Drop for Body {
    /// A relay stops reading at `[DONE]`, usually with only the body's terminator left. When
    /// that terminator is already buffered, or arrives in one non-blocking read of at most
    /// `DROP_READ_BYTES`, the connection is pooled; if any data, a wait or more bytes stand in
    /// the way, it is closed, which is what stops a backend whose client went away.
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.keep_alive {
            return;
        }
        let mut read_once = false;
        loop {
            match self.take(&mut conn.buf) {
                Ok(Some(Piece::End)) => {
                    self.conn = Some(conn);
                    self.finish();
                    return;
                }
                Ok(Some(Piece::Data(_))) | Err(_) => return,
                Ok(None) if read_once => return,
                Ok(None) => {}
            }
            read_once = true;
            let mut scratch = [0u8; DROP_READ_BYTES];
            match conn.io.try_read(&mut scratch) {
                Ok(n) if n > 0 => conn.buf.extend_from_slice(&scratch[..n]),
                _ => return,
            }
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(mut conn) = this.conn.take() else {
                return Poll::Ready(None);
            };
            match this.take(&mut conn.buf) {
                Ok(Some(Piece::Data(data))) => {
                    this.conn = Some(conn);
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Some(Piece::End)) => {
                    this.conn = Some(conn);
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            conn.buf.reserve(READ_CHUNK);
            let read = pin!(conn.io.read_buf(&mut conn.buf)).poll(cx);
            match read {
                Poll::Pending => {
                    // A stream waiting for its backend keeps no read buffer: waits are most of
                    // a long stream's life, and there may be thousands of them.
                    if conn.buf.is_empty() {
                        conn.buf = BytesMut::new();
                    }
                    this.conn = Some(conn);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) if matches!(this.delimiter, Delimiter::UntilClose) => {
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0) | Err(_)) => {
                    return Poll::Ready(Some(Err(GatewayError::UpstreamDisconnected)));
                }
                Poll::Ready(Ok(_)) => this.conn = Some(conn),
            }
        }
    }
}
