//! The benchmarks' model upstream: an OpenAI-compatible chat completions server that costs
//! next to nothing per request, so a direct run measures the load generator and the proxies,
//! not the mock. Answers are rendered once at start; an unpaced stream leaves in one write, a
//! paced one a token per write. Keep-alive, HTTP/1.1 only, for loopback benchmarks.
//!
//!   sluicegate-fast-mock --port 9000 [--tokens 16] [--pace 0ms]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 9000)]
    port: u16,
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Time between tokens (`0ms`, `20ms`).
    #[arg(long, default_value = "0ms")]
    pace: String,
}

/// The rendered answers.
struct Answers {
    /// The stream's events, one per token and the framing ones, each a whole SSE event.
    events: Vec<String>,
    usage_event: String,
    json: Vec<u8>,
    pace: Duration,
}

const HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

impl Answers {
    fn new(tokens: u32, pace: Duration) -> Self {
        let chunk = |delta: &str, finish: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock-model\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
            )
        };
        let mut events = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
        for i in 0..tokens {
            events.push(chunk(&format!(r#"{{"content":"tok{i} "}}"#), "null"));
        }
        events.push(chunk("{}", "\"stop\""));
        let usage_event = format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"mock-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            tokens + 5
        );
        let content: String = (0..tokens).map(|i| format!("tok{i} ")).collect();
        let body = format!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"mock-model\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}",
            tokens + 5
        );
        let json = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Self {
            events,
            usage_event,
            json,
            pace,
        }
    }

    /// The whole unpaced stream as one chunked response.
    fn unpaced(&self, include_usage: bool) -> Vec<u8> {
        let mut body: String = self.events.concat();
        if include_usage {
            body.push_str(&self.usage_event);
        }
        body.push_str("data: [DONE]\n\n");
        format!("{HEAD}{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).into_bytes()
    }
}

fn chunk(bytes: &str) -> Vec<u8> {
    format!("{:x}\r\n{bytes}\r\n", bytes.len()).into_bytes()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pace = parse_ms(&args.pace).context("--pace such as 0ms or 20ms")?;
    let answers = Arc::new(Answers::new(args.tokens, pace));
    let rendered = Arc::new([answers.unpaced(false), answers.unpaced(true)]);
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("fast mock listening on http://127.0.0.1:{}/v1", args.port);
    loop {
        let (socket, _) = listener.accept().await?;
        let (answers, rendered) = (answers.clone(), rendered.clone());
        #[expect(
            clippy::disallowed_methods,
            reason = "one task per benchmark connection; it ends with the connection"
        )]
        tokio::spawn(async move {
            let _ = serve(socket, &answers, &rendered).await;
        });
    }
}

fn parse_ms(text: &str) -> Option<Duration> {
    text.strip_suffix("ms")?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

async fn serve(
    mut socket: TcpStream,
    answers: &Answers,
    rendered: &[Vec<u8>; 2],
) -> anyhow::Result<()> {
    let _ = socket.set_nodelay(true);
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        // One request: its head, then as many body bytes as its content-length says.
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if read_more(&mut socket, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if read_more(&mut socket, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        buf.drain(..head_end + length);
        let compact: String = body.split_whitespace().collect();
        let stream = compact.contains("\"stream\":true");
        let usage = compact.contains("\"include_usage\":true");
        if !stream {
            socket.write_all(&answers.json).await?;
        } else if answers.pace.is_zero() {
            socket.write_all(&rendered[usize::from(usage)]).await?;
        } else {
            socket.write_all(HEAD.as_bytes()).await?;
            for (i, event) in answers.events.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(answers.pace).await;
                }
                socket.write_all(&chunk(event)).await?;
            }
            if usage {
                socket.write_all(&chunk(&answers.usage_event)).await?;
            }
            socket.write_all(&chunk("data: [DONE]\n\n")).await?;
            socket.write_all(b"0\r\n\r\n").await?;
        }
    }
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let start = buf.len();
    buf.resize(start + 8 * 1024, 0);
    let n = socket.read(&mut buf[start..]).await;
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    Ok(n?)
}
