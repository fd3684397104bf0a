//! A minimal HTTP/1.1 streaming client, so the load generator costs as little per request as
//! possible: one kept-alive TCP connection per simulated client, the request written from
//! prepared bytes, the response head parsed once, the chunked body decoded in place, and SSE
//! events found by scanning for their blank-line ends. It reads only what a benchmark needs:
//! the status, one header, when each event arrived, and whether `[DONE]` came.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one stream looked like from the client.
#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    /// From the request's first byte to the first `data: {` event.
    pub ttft: Duration,
    /// Between consecutive data events, after the first.
    pub gaps: Vec<Duration>,
    pub total: Duration,
    pub chunks: u32,
    /// `x-sluicegate-backend`, or `-`.
    pub backend: String,
}

/// Why a stream failed.
#[derive(Debug)]
pub enum Failure {
    Status(u16),
    NoDone,
    ErrorEvent,
    Io(anyhow::Error),
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Self::Status(status) => format!("status {status}"),
            Self::NoDone => "the stream ended without [DONE]".to_owned(),
            Self::ErrorEvent => "an error event".to_owned(),
            Self::Io(error) => format!("{error:#}"),
        }
    }
}

/// One client's connection to the target, reopened when the server closes it.
pub struct Client {
    addr: String,
    request: Vec<u8>,
    connection: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    /// `url` is the base URL (`http://127.0.0.1:8080/v1`); every stream posts `body` to
    /// `{url}/chat/completions` with `key`.
    pub fn new(url: &str, key: &str, body: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// targets are supported")?;
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path =
            format!("/{}/chat/completions", path.trim_end_matches('/')).replace("//chat", "/chat");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\naccept: text/event-stream\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Ok(Self {
            addr: addr.to_owned(),
            request,
            connection: None,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Runs one stream to its end. Its times start when the request is written, after any
    /// connect, so a burst of new connections measures the proxies rather than the kernel's
    /// accept queue.
    pub async fn stream(&mut self) -> Result<StreamResult, Failure> {
        let result = self.exchange().await;
        if result.is_err() {
            // Whatever state the connection is in, the next stream starts on a fresh one.
            self.connection = None;
        }
        result
    }

    async fn exchange(&mut self) -> Result<StreamResult, Failure> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| Failure::Io(e.into()))?;
            let _ = stream.set_nodelay(true);
            self.connection = Some(stream);
            self.buf.clear();
        }
        let conn = self.connection.as_mut().expect("connected above");
        let sent = Instant::now();
        conn.write_all(&self.request)
            .await
            .map_err(|e| Failure::Io(e.into()))?;
        let head = read_head(conn, &mut self.buf).await.map_err(Failure::Io)?;
        if head.status != 200 {
            // Error bodies are small and framed by content-length; skip them and go on.
            let _ = skip_body(conn, &mut self.buf, &head).await;
            if head.close {
                self.connection = None;
            }
            return Err(Failure::Status(head.status));
        }
        let mut result = StreamResult {
            backend: head.backend.clone(),
            ..StreamResult::default()
        };
        let mut body = Body::new(head.chunked, head.content_length);
        let mut events = Vec::new();
        let mut last_event: Option<Instant> = None;
        let mut done = false;
        loop {
            let finished = body
                .next(conn, &mut self.buf, &mut events)
                .await
                .map_err(Failure::Io)?;
            let now = Instant::now();
            // Complete events in `events`, each ending in a blank line.
            while let Some(end) = find(&events, b"\n\n") {
                let event = &events[..end];
                if event.starts_with(b"data: {") {
                    if result.chunks == 0 {
                        result.ttft = now.duration_since(sent);
                    } else if let Some(last) = last_event {
                        result.gaps.push(now.duration_since(last));
                    }
                    if find(event, b"\"error\"").is_some() && find(event, b"choices").is_none() {
                        return Err(Failure::ErrorEvent);
                    }
                    result.chunks += 1;
                    last_event = Some(now);
                } else if event.starts_with(b"data: [DONE]") {
                    done = true;
                }
                events.drain(..end + 2);
            }
            if finished {
                break;
            }
        }
        result.total = sent.elapsed();
        if head.close {
            self.connection = None;
        }
        if done {
            Ok(result)
        } else {
            Err(Failure::NoDone)
        }
    }
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    close: bool,
    backend: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let start = buf.len();
    buf.resize(start + 16 * 1024, 0);
    let n = conn.read(&mut buf[start..]).await;
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    if n? == 0 {
        bail!("connection closed");
    }
    Ok(())
}

async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Head> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
        fill(conn, buf).await?;
    };
    let text = std::str::from_utf8(&buf[..end]).context("head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("bad status line")?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
        close: false,
        backend: "-".to_owned(),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => head.content_length = value.parse().ok(),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            "x-sluicegate-backend" => head.backend = value.to_owned(),
            _ => {}
        }
    }
    buf.drain(..end + 4);
    Ok(head)
}

async fn skip_body(conn: &mut TcpStream, buf: &mut Vec<u8>, head: &Head) -> anyhow::Result<()> {
    let mut body = Body::new(head.chunked, head.content_length);
    let mut sink = Vec::new();
    while !body.next(conn, buf, &mut sink).await? {
        sink.clear();
    }
    Ok(())
}

/// Moves up to `left` body bytes from `buf` (reading the socket when it is empty) to `out`;
/// returns how many.
async fn take_up_to(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    left: usize,
) -> anyhow::Result<usize> {
    if buf.is_empty() {
        fill(conn, buf).await?;
    }
    let take = left.min(buf.len());
    out.extend_from_slice(&buf[..take]);
    buf.drain(..take);
    Ok(take)
}

/// The response body's framing: chunked, a length, or until the connection closes.
struct Body {
    chunked: bool,
    /// Chunked: bytes left in the current chunk; length-framed: bytes left in the body.
    left: Option<usize>,
}

impl Body {
    fn new(chunked: bool, length: Option<usize>) -> Self {
        Self {
            chunked,
            left: if chunked { None } else { length },
        }
    }

    /// Moves the next body bytes from `buf` (reading the socket when it is empty) to `out`;
    /// true once the body ended.
    async fn next(
        &mut self,
        conn: &mut TcpStream,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<bool> {
        if !self.chunked {
            let Some(left) = self.left else {
                bail!("a body without a length or chunks");
            };
            if left == 0 {
                return Ok(true);
            }
            let taken = take_up_to(conn, buf, out, left).await?;
            self.left = Some(left - taken);
            return Ok(left == taken);
        }
        loop {
            match self.left {
                Some(0) => {
                    // The CRLF after a chunk's data.
                    while buf.len() < 2 {
                        fill(conn, buf).await?;
                    }
                    buf.drain(..2);
                    self.left = None;
                }
                Some(left) => {
                    let taken = take_up_to(conn, buf, out, left).await?;
                    self.left = Some(left - taken);
                    return Ok(false);
                }
                None => {
                    let line_end = loop {
                        if let Some(end) = find(buf, b"\r\n") {
                            break end;
                        }
                        fill(conn, buf).await?;
                    };
                    let size_text = std::str::from_utf8(&buf[..line_end]).context("chunk size")?;
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .context("chunk size")?;
                    buf.drain(..line_end + 2);
                    if size == 0 {
                        // The last chunk, then the (empty) trailer.
                        while find(buf, b"\r\n").is_none() {
                            fill(conn, buf).await?;
                        }
                        let end = find(buf, b"\r\n").unwrap_or(0);
                        buf.drain(..end + 2);
                        return Ok(true);
                    }
                    self.left = Some(size);
                }
            }
        }
    }
}
