//! `MockUpstream`: a scripted OpenAI-compatible upstream on raw TCP, so a test controls every
//! byte (and every hang or drop) and can see what the gateway did: the requests it sent, when
//! each connection opened and closed, and how many bytes the upstream managed to write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The halves of an upstream connection, plain or TLS.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The wire format a scripted stream is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `chat.completion.chunk` events and `[DONE]` (OpenAI, vLLM, Azure).
    #[default]
    OpenAi,
    /// Anthropic's Messages events, `message_start` to `message_stop`.
    Anthropic,
}
use tokio::sync::Notify;
use tokio::time::Instant;

/// What the upstream answers to every request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A 200 SSE stream of `tokens` content chunks.
    Stream(StreamScript),
    /// A complete response with this status, JSON body and extra headers.
    Status {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// A 200 SSE stream of these pieces, each its own write, as they are (a recorded
    /// transcript); then the end of the body, or with `cut` an abrupt close.
    Events { pieces: Vec<String>, cut: bool },
    /// Read the request, then never answer.
    Hang,
}

#[derive(Debug, Clone, Default)]
pub struct StreamScript {
    pub tokens: Vec<String>,
    pub pace: Duration,
    pub first_delay: Duration,
    /// Close the connection abruptly after this many content chunks.
    pub drop_after: Option<usize>,
    /// Send an in-band `{"error":...}` event after this many content chunks.
    pub error_after: Option<usize>,
    pub shape: Shape,
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One accepted connection's timeline.
#[derive(Debug)]
pub struct ConnectionLog {
    pub opened: Instant,
    closed: Mutex<Option<Instant>>,
    bytes_written: AtomicU64,
}

impl ConnectionLog {
    pub fn closed_at(&self) -> Option<Instant> {
        *self.closed.lock().expect("lock")
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Shared {
    reply: Mutex<Arc<Reply>>,
    requests: Mutex<Vec<Seen>>,
    connections: Mutex<Vec<Arc<ConnectionLog>>>,
    changed: Notify,
}

pub struct MockUpstream {
    pub addr: std::net::SocketAddr,
    /// Served over TLS (for the name `localhost`).
    tls: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Builds a `MockUpstream`; `start` binds it on a free loopback port.
pub struct MockBuilder {
    reply: Reply,
    keep_alive: KeepAlive,
    tls: Option<TlsAcceptor>,
}

/// What the mock does with a connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    /// Says `connection: close` and closes.
    Off,
    /// Says keep-alive and reads the next request.
    On,
    /// Says keep-alive, then closes anyway, as a backend that times out idle connections does.
    Lie,
}

impl MockUpstream {
    pub fn stream(tokens: usize) -> MockBuilder {
        let tokens = (0..tokens).map(|i| format!("tok{i} ")).collect();
        MockBuilder::from(Reply::Stream(StreamScript {
            tokens,
            ..StreamScript::default()
        }))
    }

    pub fn stream_tokens(tokens: &[&str]) -> MockBuilder {
        let tokens = tokens.iter().map(|t| (*t).to_owned()).collect();
        MockBuilder::from(Reply::Stream(StreamScript {
            tokens,
            ..StreamScript::default()
        }))
    }

    pub fn reply(reply: Reply) -> MockBuilder {
        MockBuilder::from(reply)
    }

    /// `http://127.0.0.1:PORT/v1`, or over TLS `https://localhost:PORT/v1`.
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/v1", self.addr.port())
        } else {
            format!("http://{}/v1", self.addr)
        }
    }

    /// Answers new connections with `reply` from now on.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().expect("lock") = Arc::new(reply);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().expect("lock").clone()
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionLog>> {
        self.shared.connections.lock().expect("lock").clone()
    }

    /// The most connections that were open at the same time.
    pub fn max_concurrent_connections(&self) -> usize {
        let connections = self.connections();
        connections
            .iter()
            .map(|c| {
                connections
                    .iter()
                    .filter(|o| {
                        o.opened <= c.opened && o.closed_at().is_none_or(|at| at > c.opened)
                    })
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Waits until connection `index` has been opened and then closed by the gateway.
    pub async fn closed(&self, index: usize) -> Instant {
        loop {
            let changed = self.shared.changed.notified();
            if let Some(at) = self.connections().get(index).and_then(|c| c.closed_at()) {
                return at;
            }
            changed.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl From<Reply> for MockBuilder {
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            keep_alive: KeepAlive::Off,
            tls: None,
        }
    }
}

impl MockBuilder {
    fn script(&mut self) -> &mut StreamScript {
        match &mut self.reply {
            Reply::Stream(script) => script,
            other => panic!("only stream replies have a pace, not {other:?}"),
        }
    }

    pub fn pace(mut self, pace: Duration) -> Self {
        self.script().pace = pace;
        self
    }

    pub fn first_delay(mut self, delay: Duration) -> Self {
        self.script().first_delay = delay;
        self
    }

    pub fn drop_after(mut self, chunks: usize) -> Self {
        self.script().drop_after = Some(chunks);
        self
    }

    pub fn error_after(mut self, chunks: usize) -> Self {
        self.script().error_after = Some(chunks);
        self
    }

    /// Writes the stream in `shape`.
    pub fn shape(mut self, shape: Shape) -> Self {
        self.script().shape = shape;
        self
    }

    /// Serves over TLS with `acceptor` (see `support::tls`).
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Answers several requests per connection (HTTP/1.1 keep-alive) instead of closing.
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = KeepAlive::On;
        self
    }

    /// Advertises keep-alive but closes each connection right after its answer.
    pub fn closes_idle_connections(mut self) -> Self {
        self.keep_alive = KeepAlive::Lie;
        self
    }

    pub async fn start(self) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            reply: Mutex::new(Arc::new(self.reply)),
            requests: Mutex::default(),
            connections: Mutex::default(),
            changed: Notify::new(),
        });
        let keep_alive = self.keep_alive;
        let tls = self.tls.is_some();
        let acceptor = self.tls;
        let accept_shared = shared.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the mock serves for the whole test"
        )]
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let log = Arc::new(ConnectionLog {
                    opened: Instant::now(),
                    closed: Mutex::new(None),
                    bytes_written: AtomicU64::new(0),
                });
                accept_shared
                    .connections
                    .lock()
                    .expect("lock")
                    .push(log.clone());
                accept_shared.changed.notify_waiters();
                let shared = accept_shared.clone();
                let reply = shared.reply.lock().expect("lock").clone();
                let acceptor = acceptor.clone();
                #[expect(clippy::disallowed_methods, reason = "one task per mock connection")]
                tokio::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let halves = match acceptor {
                        None => {
                            let (reader, writer) = socket.into_split();
                            Some((Box::new(reader) as Reader, Box::new(writer) as Writer))
                        }
                        Some(acceptor) => acceptor.accept(socket).await.ok().map(|tls| {
                            let (reader, writer) = tokio::io::split(tls);
                            (Box::new(reader) as Reader, Box::new(writer) as Writer)
                        }),
                    };
                    match halves {
                        Some(halves) => {
                            serve_connection(halves, &shared, &log, &reply, keep_alive).await
                        }
                        None => mark_closed(&shared, &log),
                    }
                });
            }
        });
        MockUpstream {
            addr,
            tls,
            shared,
            task,
        }
    }
}

async fn serve_connection(
    (mut reader, mut writer): (Reader, Writer),
    shared: &Shared,
    log: &Arc<ConnectionLog>,
    reply: &Reply,
    keep_alive: KeepAlive,
) {
    while let Some(seen) = read_request(&mut reader).await {
        let include_usage = seen.body["stream_options"]["include_usage"] == true;
        shared.requests.lock().expect("lock").push(seen);
        shared.changed.notify_waiters();
        let advertise = keep_alive != KeepAlive::Off;
        if keep_alive == KeepAlive::On {
            // The next request (or EOF) is read once this answer is written.
            write_reply(&mut writer, log, reply, include_usage, advertise).await;
            continue;
        }
        if keep_alive == KeepAlive::Lie {
            write_reply(&mut writer, log, reply, include_usage, advertise).await;
            let _ = writer.shutdown().await;
            break;
        }
        // The gateway closing its side shows up as EOF on our read half.
        let eof = async {
            let mut byte = [0u8; 1];
            while matches!(reader.read(&mut byte).await, Ok(n) if n > 0) {}
        };
        let mut eof = std::pin::pin!(eof);
        tokio::select! {
            () = &mut eof => {}
            () = write_reply(&mut writer, log, reply, include_usage, advertise) => eof.await,
        }
        break;
    }
    mark_closed(shared, log);
}

fn mark_closed(shared: &Shared, log: &ConnectionLog) {
    log.closed
        .lock()
        .expect("lock")
        .get_or_insert_with(Instant::now);
    shared.changed.notify_waiters();
}

async fn read_request(reader: &mut Reader) -> Option<Seen> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length])
        .unwrap_or(serde_json::Value::Null);
    Some(Seen {
        request_line,
        headers,
        body,
    })
}

async fn write_reply(
    writer: &mut Writer,
    log: &ConnectionLog,
    reply: &Reply,
    include_usage: bool,
    keep_alive: bool,
) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Status {
            status,
            body,
            headers,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str(&format!("connection: {connection}\r\n\r\n"));
            let _ = send(writer, log, format!("{head}{body}").as_bytes()).await;
            if !keep_alive {
                let _ = writer.shutdown().await;
            }
        }
        Reply::Stream(script) => {
            let _ = write_stream(writer, log, script, include_usage, connection).await;
        }
        Reply::Events { pieces, cut } => {
            let _ = write_events(writer, log, pieces, *cut, connection).await;
        }
    }
}

async fn write_events(
    writer: &mut Writer,
    log: &ConnectionLog,
    pieces: &[String],
    cut: bool,
    connection: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n"
    );
    send(writer, log, head.as_bytes()).await?;
    for piece in pieces {
        send_chunk(writer, log, piece).await?;
        // Each piece its own read at the gateway.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if cut {
        return writer.shutdown().await;
    }
    send(writer, log, b"0\r\n\r\n").await
}

async fn write_stream(
    writer: &mut Writer,
    log: &ConnectionLog,
    script: &StreamScript,
    include_usage: bool,
    connection: &str,
) -> std::io::Result<()> {
    tokio::time::sleep(script.first_delay).await;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n"
    );
    send(writer, log, head.as_bytes()).await?;
    if script.shape == Shape::Anthropic {
        return write_messages(writer, log, script).await;
    }
    for (i, token) in script.tokens.iter().enumerate() {
        if script.drop_after == Some(i) {
            // An abrupt end inside the chunked body: no terminating chunk.
            return writer.shutdown().await;
        }
        if script.error_after == Some(i) {
            let event = r#"data: {"error":{"message":"out of KV cache","type":"InternalServerError","code":500}}"#;
            return send_chunk(writer, log, &format!("{event}\n\n")).await;
        }
        if i > 0 && !script.pace.is_zero() {
            tokio::time::sleep(script.pace).await;
        }
        send_chunk(
            writer,
            log,
            &chunk(serde_json::json!({"content": token}), None),
        )
        .await?;
    }
    send_chunk(writer, log, &chunk(serde_json::json!({}), Some("stop"))).await?;
    if include_usage {
        let n = script.tokens.len();
        let usage = format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"upstream-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            n + 5
        );
        send_chunk(writer, log, &usage).await?;
    }
    send_chunk(writer, log, "data: [DONE]\n\n").await?;
    send(writer, log, b"0\r\n\r\n").await
}

/// The stream as Anthropic's Messages API writes it: the same tokens, drops and errors, its
/// usage (5 input tokens, one output token per content event) always included.
async fn write_messages(
    writer: &mut Writer,
    log: &ConnectionLog,
    script: &StreamScript,
) -> std::io::Result<()> {
    let event = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let start = event(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "upstream-model", "stop_reason": null,
            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    );
    send_chunk(writer, log, &start).await?;
    let block = serde_json::json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}});
    send_chunk(writer, log, &event("content_block_start", block)).await?;
    for (i, token) in script.tokens.iter().enumerate() {
        if script.drop_after == Some(i) {
            return writer.shutdown().await;
        }
        if script.error_after == Some(i) {
            let error = serde_json::json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}});
            return send_chunk(writer, log, &event("error", error)).await;
        }
        if i > 0 && !script.pace.is_zero() {
            tokio::time::sleep(script.pace).await;
        }
        let delta = serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": token}});
        send_chunk(writer, log, &event("content_block_delta", delta)).await?;
    }
    let stop = serde_json::json!({"type": "content_block_stop", "index": 0});
    send_chunk(writer, log, &event("content_block_stop", stop)).await?;
    let delta = serde_json::json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": script.tokens.len()}});
    send_chunk(writer, log, &event("message_delta", delta)).await?;
    let end = serde_json::json!({"type": "message_stop"});
    send_chunk(writer, log, &event("message_stop", end)).await?;
    send(writer, log, b"0\r\n\r\n").await
}

/// A golden transcript of `proto/`, as text.
pub fn golden(name: &str) -> String {
    std::fs::read_to_string(format!("{}/proto/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("golden transcript")
}

/// Replays the golden transcript `name` whole, then ends the body.
pub fn replaying(name: &str) -> Reply {
    Reply::Events {
        pieces: vec![golden(name)],
        cut: false,
    }
}

/// One OpenAI-shaped chunk event, as the upstream names its model.
pub fn chunk(delta: serde_json::Value, finish_reason: Option<&str>) -> String {
    let json = serde_json::json!({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    format!("data: {json}\n\n")
}

async fn send_chunk(writer: &mut Writer, log: &ConnectionLog, data: &str) -> std::io::Result<()> {
    send(
        writer,
        log,
        format!("{:x}\r\n{data}\r\n", data.len()).as_bytes(),
    )
    .await
}

async fn send(writer: &mut Writer, log: &ConnectionLog, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    log.bytes_written
        .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}
