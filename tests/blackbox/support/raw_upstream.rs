//! `RawUpstream`: an upstream whose every byte a test writes by hand, for hostile framing,
//! floods and connections that close at awkward moments. Each accepted connection runs the
//! test's script; the upstream counts connections and the requests the scripts read.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct RawUpstream {
    pub addr: std::net::SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: AtomicUsize,
    closed: AtomicUsize,
}

/// One accepted connection, handed to the script.
pub struct RawConn {
    /// 0 for the first connection the upstream accepted.
    pub index: usize,
    pub socket: TcpStream,
    counts: Arc<Counts>,
    buf: Vec<u8>,
}

impl RawUpstream {
    /// Runs `script` for each connection, on its own task.
    pub async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(RawConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let counts = Arc::new(Counts::default());
        let accept_counts = counts.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the upstream serves for the whole test"
        )]
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let index = accept_counts.connections.fetch_add(1, Ordering::SeqCst);
                let conn = RawConn {
                    index,
                    socket,
                    counts: accept_counts.clone(),
                    buf: Vec::new(),
                };
                let counts = accept_counts.clone();
                let run = script(conn);
                #[expect(clippy::disallowed_methods, reason = "one task per connection")]
                tokio::spawn(async move {
                    run.await;
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, counts, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    /// Scripts that have returned (their connection is done with).
    pub fn finished(&self) -> usize {
        self.counts.closed.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawConn {
    /// Reads one whole request (head and `content-length` body); `false` at EOF.
    pub async fn read_request(&mut self) -> bool {
        let Some(head_end) = self.read_head().await else {
            return false;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            if !self.fill().await {
                return false;
            }
        }
        self.buf.drain(..head_end + length);
        self.counts.requests.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Reads only a request's head, leaving its body unread; `false` at EOF.
    pub async fn read_request_head(&mut self) -> bool {
        let Some(head_end) = self.read_head().await else {
            return false;
        };
        self.buf.drain(..head_end);
        self.counts.requests.fetch_add(1, Ordering::SeqCst);
        true
    }

    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.socket.write_all(bytes).await.is_ok()
    }

    /// Writes a complete JSON response that keeps the connection open.
    pub async fn write_completion(&mut self) -> bool {
        let body = r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.write(response.as_bytes()).await
    }

    /// Waits until the gateway closes its side.
    pub async fn until_closed(&mut self) {
        let mut scratch = [0u8; 4096];
        while matches!(self.socket.read(&mut scratch).await, Ok(n) if n > 0) {}
    }

    async fn read_head(&mut self) -> Option<usize> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(i + 4);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.socket.read(&mut chunk).await {
            Ok(n) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }
}
