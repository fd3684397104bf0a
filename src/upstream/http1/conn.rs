//! One upstream connection: connect (TLS when asked), write a request, read the response head.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::io::poll_read_buf;

use super::io::Io;

/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;
/// Read buffer granted per read; a response's bytes are sliced out of it without copying.
pub const READ_CHUNK: usize = 4 * 1024;

/// A connection and the bytes read from it but not yet consumed.
#[derive(Debug)]
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
}

/// How a backend's connections are secured: its TLS settings and the name its certificate
/// must carry.
#[derive(Clone)]
pub struct TlsTarget {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: ServerName<'static>) -> Self {
        Self {
            connector: TlsConnector::from(config),
            server_name,
        }
    }
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
    /// The connection was closed or reset before any response byte.
    ClosedEarly(EarlyClose),
    /// The connection broke after part of a head arrived.
    Broken,
    /// The head was malformed, too large, or not an answer the gateway can relay.
    Malformed(&'static str),
    /// The backend ended the TLS session with an alert (with TLS 1.3 a refused client
    /// certificate shows only here, after the handshake seemed done); why, for the log.
    Tls(String),
}

/// When a connection closed before any response byte, which says whether the backend can have
/// acted on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyClose {
    /// The write failed: the backend never got a whole request, so it cannot have acted on it.
    DuringWrite,
    /// Within `RESEND_WINDOW` of a completed write: most likely a pooled connection the backend
    /// closed while idle (the race every keep-alive client has), though it may have read it.
    RightAfterWrite,
    /// Later: the backend may well have acted on the request.
    Later,
}

/// A close this soon after the request was written is taken for the idle-close race.
const RESEND_WINDOW: Duration = Duration::from_millis(50);
/// Informational (1xx) heads skipped before the final one.
const MAX_INFORMATIONAL: usize = 8;

impl Conn {
    /// Connects to `host:port`, and with `tls` completes a handshake, all within `timeout`.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Option<&TlsTarget>,
        timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let connecting = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|_| ConnectError::Refused)?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else {
                return Ok(Io::Plain(tcp));
            };
            match tls.connector.connect(tls.server_name.clone(), tcp).await {
                Ok(stream) => Ok(Io::Tls(Box::new(stream))),
                Err(error) => Err(ConnectError::Tls(handshake_failure(&error))),
            }
        };
        let io = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectError::TimedOut)??;
        Ok(Self {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Writes `request` and reads the response head, skipping 1xx heads. Reading starts with
    /// the write, so a backend that answers early (a 413 while the body is still being sent)
    /// is heard; such an answer closes the connection afterwards.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Head, ExchangeError> {
        let mut written = 0;
        let mut written_at: Option<Instant> = None;
        let mut write_failed = false;
        let mut received_any = false;
        let mut informational = 0;
        loop {
            if let Some(mut head) = parse_head(&mut self.buf)? {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ExchangeError::Malformed(
                        "unexpected 101 switching protocols",
                    ));
                }
                if head.status.is_informational() {
                    informational += 1;
                    if informational > MAX_INFORMATIONAL {
                        return Err(ExchangeError::Malformed("too many informational responses"));
                    }
                    continue;
                }
                head.keep_alive &= written_at.is_some();
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(ExchangeError::Malformed("the response head is too large"));
            }
            self.buf.reserve(READ_CHUNK);
            let writing = written_at.is_none() && !write_failed;
            // The write goes on while the read waits; whichever moves first wakes the loop.
            let progress = poll_fn(|cx| {
                if writing {
                    match write_some(&mut self.io, cx, &request[written..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Progress::Written),
                        Poll::Ready(Ok(n)) => {
                            written += n;
                            return Poll::Ready(Progress::Wrote);
                        }
                        Poll::Ready(Err(())) => return Poll::Ready(Progress::WriteFailed),
                        Poll::Pending => {}
                    }
                }
                poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf).map(Progress::Read)
            })
            .await;
            match progress {
                Progress::Wrote => {}
                Progress::Written => written_at = Some(Instant::now()),
                Progress::WriteFailed => write_failed = true,
                // A TLS error after the request went out is a refused handshake only when the
                // alert says so (TLS 1.3 tells a refused client certificate here); any other
                // may come after the backend acted on the request.
                Progress::Read(Err(error))
                    if written_at.is_none() || handshake_refusal(&error).is_some() =>
                {
                    if let Some(reason) = tls_reason(&error) {
                        return Err(ExchangeError::Tls(reason));
                    }
                    if !received_any {
                        return Err(ExchangeError::ClosedEarly(EarlyClose::DuringWrite));
                    }
                    return Err(ExchangeError::Broken);
                }
                Progress::Read(Ok(0) | Err(_)) if !received_any => {
                    let when = match written_at {
                        None => EarlyClose::DuringWrite,
                        Some(at) if at.elapsed() <= RESEND_WINDOW => EarlyClose::RightAfterWrite,
                        Some(_) => EarlyClose::Later,
                    };
                    return Err(ExchangeError::ClosedEarly(when));
                }
                Progress::Read(Ok(0) | Err(_)) => return Err(ExchangeError::Broken),
                Progress::Read(Ok(_)) => received_any = true,
            }
        }
    }

    /// True when an idle connection is still open with nothing unexpected to read.
    pub fn is_reusable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    Refused,
    TimedOut,
    /// The TLS handshake failed; why, for the log (a wrong CA, an expired certificate, a name
    /// that does not match, a client certificate refused).
    Tls(String),
}

/// What a step of the exchange did.
enum Progress {
    /// Part of the request went out.
    Wrote,
    /// All of it went out (and was flushed).
    Written,
    WriteFailed,
    Read(std::io::Result<usize>),
}

/// Writes some of `rest` (flushing once it is all out): `Ok(0)` when nothing is left.
fn write_some(
    io: &mut Io,
    cx: &mut std::task::Context<'_>,
    rest: &[u8],
) -> Poll<Result<usize, ()>> {
    if rest.is_empty() {
        return Pin::new(io)
            .poll_flush(cx)
            .map(|r| r.map(|()| 0).map_err(drop));
    }
    match Pin::new(io).poll_write(cx, rest) {
        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Err(())),
        other => other.map(|r| r.map_err(drop)),
    }
}

/// Why a TLS handshake failed, in words for the log: rustls's own reason when it gave one.
fn handshake_failure(error: &std::io::Error) -> String {
    tls_reason(error).unwrap_or_else(|| error.to_string())
}

/// rustls's reason, when `error` is an alert refusing the handshake (a certificate, the CA,
/// access, the protocol).
fn handshake_refusal(error: &std::io::Error) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied
            | Alert::HandshakeFailure
            | Alert::ProtocolVersion
            | Alert::InsufficientSecurity,
        ) => Some(inner.to_string()),
        _ => None,
    }
}

/// rustls's reason, when `error` carries one.
fn tls_reason(error: &std::io::Error) -> Option<String> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(rustls::Error::to_string)
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
    let http11 = response.version == Some(1);
    let mut fields = HeadFields::default();
    for header in response.headers.iter() {
        fields.read(header.name, header.value)?;
    }
    buf.advance(length);
    let head = fields.into_head(status, http11)?;
    Ok(Some(head))
}

/// The framing and connection fields of a response head, read one header at a time.
#[derive(Default)]
struct HeadFields {
    /// The last transfer coding named, over every `Transfer-Encoding` header.
    last_coding: Option<Vec<u8>>,
    content_length: Option<u64>,
    close: bool,
    retry_after: Option<Vec<u8>>,
    retry_after_ms: Option<Vec<u8>>,
}

impl HeadFields {
    fn read(&mut self, name: &str, value: &[u8]) -> Result<(), ExchangeError> {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(last) = tokens(value).last() {
                self.last_coding = Some(last.to_ascii_lowercase());
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // A list (`5, 5`) or repeated fields must all agree (RFC 9110 section 8.6).
            for item in value.split(|b| *b == b',') {
                let length = content_length(item.trim_ascii())?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(ExchangeError::Malformed(
                        "conflicting content-length values",
                    ));
                }
                self.content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            self.close |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case("retry-after") {
            self.retry_after = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("retry-after-ms") {
            self.retry_after_ms = Some(value.to_vec());
        }
        Ok(())
    }

    /// Framing per RFC 9112 section 6.3: no body for 204 and 304, else `Transfer-Encoding`
    /// over `Content-Length` (and then the connection is not reused), else until close.
    fn into_head(self, status: StatusCode, http11: bool) -> Result<Head, ExchangeError> {
        if self.last_coding.is_some() && !http11 {
            return Err(ExchangeError::Malformed(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        let both = self.last_coding.is_some() && self.content_length.is_some();
        let framing = if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            Framing::Length(0)
        } else if let Some(coding) = &self.last_coding {
            if coding == b"chunked" {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            self.content_length
                .map_or(Framing::UntilClose, Framing::Length)
        };
        Ok(Head {
            status,
            keep_alive: http11 && !self.close && !both && framing != Framing::UntilClose,
            framing,
            retry_after: self.retry_after,
            retry_after_ms: self.retry_after_ms,
        })
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `1*DIGIT`, nothing else (no sign, no spaces inside), below 2^63.
fn content_length(digits: &[u8]) -> Result<u64, ExchangeError> {
    let bad = ExchangeError::Malformed("bad content-length");
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(bad)
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
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: upgrade\r\nconnection: CLOSE\r\ncontent-length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
                false,
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
        let malformed = [
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 50\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ];
        for text in malformed {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(
                matches!(parse_head(&mut buf), Err(ExchangeError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::test_support::{cases, mostly};

        /// What a parse says, comparable.
        #[derive(Debug, PartialEq)]
        enum Outcome {
            Partial,
            /// The head as parsed, without how many bytes followed it.
            Head(String),
            Error(String),
        }

        fn outcome(bytes: &[u8]) -> Outcome {
            let mut buf = BytesMut::from(bytes);
            match parse_head(&mut buf) {
                Ok(None) => Outcome::Partial,
                Ok(Some(head)) => Outcome::Head(format!("{head:?}")),
                Err(error) => Outcome::Error(format!("{error:?}")),
            }
        }

        fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
            mostly(
                vec![
                    b"HTTP/1.1 200 OK\r\n",
                    b"HTTP/1.0 429 X\r\n",
                    b"content-length: 5\r\n",
                    b"Content-Length: 7, 7\r\n",
                    b"transfer-encoding: chunked\r\n",
                    b"connection: close\r\n",
                    b"retry-after: 3\r\n",
                    b"\r\n",
                    b"x: y\r\n",
                ],
                12,
            )
        }

        proptest! {
            #![proptest_config(cases(256))]

            #[test]
            fn a_prefix_is_partial_or_decides_as_the_whole_does(
                bytes in head_bytes(),
                cut in any::<prop::sample::Index>(),
            ) {
                // A prefix is still partial, or it decides exactly as the whole input does: the
                // same head (the bytes after it do not matter) or an error.
                let whole = outcome(&bytes);
                let early = outcome(&bytes[..cut.index(bytes.len() + 1)]);
                match &early {
                    Outcome::Partial => {}
                    Outcome::Head(_) => prop_assert_eq!(&early, &whole),
                    Outcome::Error(_) => {
                        prop_assert!(matches!(whole, Outcome::Error(_)), "{:?} vs {:?}", early, whole);
                    }
                }
            }
        }
    }
}
