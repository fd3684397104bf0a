//! One upstream connection: connect, write a request, read the response head.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;
/// Read buffer granted per read; a response's bytes are sliced out of it without copying.
pub const READ_CHUNK: usize = 4 * 1024;

/// A connection and the bytes read from it but not yet consumed.
#[derive(Debug)]
pub struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
}

/// The parts of a response head the gateway acts on.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub framing: Framing,
    /// The connection may carry another request once this body is read.
    pub keep_alive: bool,
    pub retry_after: Option<Vec<u8>>,
    pub retry_after_ms: Option<Vec<u8>>,
}

/// Why an exchange failed before a response head arrived.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection was closed or reset before any response byte: on a reused connection
    /// the backend most likely closed it while idle.
    ClosedEarly,
    /// The connection broke after part of a head arrived.
    Broken,
    /// The head was malformed or too large.
    Malformed(&'static str),
}

impl Conn {
    pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self, ConnectError> {
        let io = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(io)) => io,
            Ok(Err(_)) => return Err(ConnectError::Refused),
            Err(_) => return Err(ConnectError::TimedOut),
        };
        let _ = io.set_nodelay(true);
        Ok(Self {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Writes `request` and reads the response head (skipping 1xx heads).
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Head, ExchangeError> {
        self.io
            .write_all(request)
            .await
            .map_err(|_| ExchangeError::ClosedEarly)?;
        let mut received_any = false;
        loop {
            if let Some(head) = parse_head(&mut self.buf)? {
                if head.status.is_informational() {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(ExchangeError::Malformed("the response head is too large"));
            }
            self.buf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) if !received_any => return Err(ExchangeError::ClosedEarly),
                Ok(0) | Err(_) => return Err(ExchangeError::Broken),
                Ok(_) => received_any = true,
            }
        }
    }

    /// True when an idle connection is still open with nothing unexpected to read.
    pub fn is_reusable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    Refused,
    TimedOut,
}

fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ExchangeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Malformed("the response head does not parse")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Malformed("the response status is invalid"))?;
    let mut framing = None;
    let mut keep_alive = response.version == Some(1);
    let mut retry_after = None;
    let mut retry_after_ms = None;
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            framing = Some(if last.eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        } else if header.name.eq_ignore_ascii_case("content-length") && framing.is_none() {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            framing = Some(Framing::Length(
                length.ok_or(ExchangeError::Malformed("bad content-length"))?,
            ));
        } else if header.name.eq_ignore_ascii_case("connection")
            && value.trim_ascii().eq_ignore_ascii_case(b"close")
        {
            keep_alive = false;
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_vec());
        } else if header.name.eq_ignore_ascii_case("retry-after-ms") {
            retry_after_ms = Some(value.to_vec());
        }
    }
    buf.advance(length);
    let framing = if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        Framing::Length(0)
    } else {
        framing.unwrap_or(Framing::UntilClose)
    };
    Ok(Some(Head {
        status,
        keep_alive: keep_alive && framing != Framing::UntilClose,
        framing,
        retry_after,
        retry_after_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str) -> Head {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf).expect("parses").expect("complete")
    }

    #[test]
    fn framing_and_keep_alive_follow_the_headers() {
        let rows = [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n",
                Framing::Length(3),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Length(0), true),
        ];
        for (text, framing, keep_alive) in rows {
            let head = head_of(text);
            assert_eq!(
                (head.framing, head.keep_alive),
                (framing, keep_alive),
                "{text:?}"
            );
        }
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_fail() {
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(matches!(parse_head(&mut partial), Ok(None)));
        let mut bad = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut bad),
            Err(ExchangeError::Malformed(_))
        ));
        let mut garbage = BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut garbage),
            Err(ExchangeError::Malformed(_))
        ));
    }
}
