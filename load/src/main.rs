//! Load generator: N concurrent streaming clients against an OpenAI-compatible base URL for a
//! bounded time; reports streams/s and time-to-first-token percentiles.
//!
//! Time to first token is measured to the first `data:` event carrying JSON, so heartbeat
//! comments do not count. Every request loop is bounded by `--duration`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(about = "Concurrent streaming load against an OpenAI-compatible endpoint")]
struct Args {
    /// Base URL including /v1, such as http://127.0.0.1:8080/v1.
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "sk-sluicegate-dev")]
    key: String,
    #[arg(long, default_value = "mock-gpt")]
    model: String,
    /// Concurrent clients, each running one stream at a time.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// How long to run, such as 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// A label printed with the results.
    #[arg(long, default_value = "run")]
    label: String,
    /// Also print one line per second: completed streams, errors, TTFT p99 and which backend
    /// (`x-sluicegate-backend`) answered.
    #[arg(long)]
    timeline: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration unit in {text}")),
    }
}

#[derive(Default)]
struct Totals {
    ttft: Vec<Duration>,
    streams: u64,
    errors: u64,
    seconds: Vec<Second>,
}

/// What completed during one second of the run.
#[derive(Default)]
struct Second {
    ok: u64,
    errors: u64,
    ttft: Vec<Duration>,
    backends: std::collections::BTreeMap<String, u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .read_timeout(Duration::from_secs(30))
        .build()?;
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": true,
    })
    .to_string();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    let deadline = started + args.duration;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, args, body, totals) =
                (client.clone(), args.clone(), body.clone(), totals.clone());
            #[expect(
                clippy::disallowed_methods,
                reason = "one worker per simulated client, bounded by the deadline"
            )]
            tokio::spawn(
                async move { worker(client, &args, body, started, deadline, totals).await },
            )
        })
        .collect();
    for worker in workers {
        worker.await.context("worker panicked")?;
    }
    let elapsed = started.elapsed();
    let mut totals = totals.lock().await;
    if totals.streams == 0 {
        bail!("no stream completed ({} errors)", totals.errors);
    }
    report(&args, elapsed, &mut totals);
    Ok(())
}

async fn worker(
    client: reqwest::Client,
    args: &Args,
    body: String,
    started: Instant,
    deadline: Instant,
    totals: Arc<Mutex<Totals>>,
) {
    while Instant::now() < deadline {
        let result = one_stream(&client, args, body.clone()).await;
        let mut totals = totals.lock().await;
        let index = started.elapsed().as_secs() as usize;
        if totals.seconds.len() <= index {
            totals.seconds.resize_with(index + 1, Second::default);
        }
        match result {
            Ok((ttft, backend)) => {
                totals.streams += 1;
                totals.ttft.push(ttft);
                let second = &mut totals.seconds[index];
                second.ok += 1;
                second.ttft.push(ttft);
                *second.backends.entry(backend).or_default() += 1;
            }
            Err(_) => {
                totals.errors += 1;
                totals.seconds[index].errors += 1;
            }
        }
    }
}

/// Runs one stream to its end; returns its time to first token and the backend that answered.
async fn one_stream(
    client: &reqwest::Client,
    args: &Args,
    body: String,
) -> anyhow::Result<(Duration, String)> {
    let sent = Instant::now();
    let response = client
        .post(format!("{}/chat/completions", args.url))
        .bearer_auth(&args.key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let backend = response
        .headers()
        .get("x-sluicegate-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut chunks = response.bytes_stream();
    let mut ttft = None;
    let mut tail = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if ttft.is_none() && chunk.windows(7).any(|w| w == b"data: {") {
            ttft = Some(sent.elapsed());
        }
        tail.extend_from_slice(&chunk);
        let keep = tail.len().saturating_sub(32);
        tail.drain(..keep);
    }
    if !tail.ends_with(b"data: [DONE]\n\n") {
        bail!("stream did not finish with [DONE]");
    }
    Ok((ttft.context("no data event")?, backend))
}

fn report(args: &Args, elapsed: Duration, totals: &mut Totals) {
    if args.timeline {
        for (t, second) in totals.seconds.iter_mut().enumerate() {
            second.ttft.sort_unstable();
            let p99 = second
                .ttft
                .get(((second.ttft.len() as f64 - 1.0) * 0.99).round().max(0.0) as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            let backends = serde_json::to_string(&second.backends).expect("map serialises");
            println!(
                "{{\"label\":\"{}\",\"second\":{t},\"ok\":{},\"errors\":{},\"ttft_ms_p99\":{p99:.3},\"backends\":{backends}}}",
                args.label, second.ok, second.errors
            );
        }
    }
    totals.ttft.sort_unstable();
    let pct = |p: f64| {
        let i = ((totals.ttft.len() as f64 - 1.0) * p).round() as usize;
        totals.ttft[i].as_secs_f64() * 1000.0
    };
    let rate = totals.streams as f64 / elapsed.as_secs_f64();
    println!(
        "{{\"label\":\"{}\",\"concurrency\":{},\"streams\":{},\"errors\":{},\"streams_per_s\":{:.1},\"ttft_ms_p50\":{:.3},\"ttft_ms_p90\":{:.3},\"ttft_ms_p99\":{:.3}}}",
        args.label,
        args.concurrency,
        totals.streams,
        totals.errors,
        rate,
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
}
