//! Load generator: N concurrent streaming clients against an OpenAI-compatible base URL for a
//! bounded time; reports streams/s, time to first token, the gaps between events, whole-stream
//! times, events per stream and errors by kind (a status other than 200, no `[DONE]`, an error
//! event, a broken connection), as one JSON line.
//!
//! Each client is one future on its own kept-alive connection (`client.rs`, a minimal HTTP/1.1
//! client) and keeps its own counts, merged at the end, so clients share nothing while they
//! run; the clients are split over one single-threaded runtime per core (`--threads`). Time to first token is measured to the first `data:` event carrying JSON, so heartbeat
//! comments do not count. Every request loop is bounded by `--duration`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

mod chart;
mod client;
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
    /// Write an SVG chart of the TTFT and whole-stream latency distributions here.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// No progress bar and no summary table on stderr (the JSON line stays on stdout).
    #[arg(long)]
    quiet: bool,
    /// Threads generating load, each with its own share of the clients (default: one per
    /// core).
    #[arg(long)]
    threads: Option<usize>,
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

/// What one worker saw; merged at the end, so workers share nothing while they run.
#[derive(Default)]
struct Totals {
    ttft: Vec<Duration>,
    gaps: Vec<Duration>,
    total: Vec<Duration>,
    chunks: u64,
    streams: u64,
    errors: Errors,
    /// The first failure, described for the operator (stderr).
    first_failure: Option<String>,
    seconds: Vec<Second>,
}

#[derive(Default, Clone, Copy)]
struct Errors {
    status: u64,
    no_done: u64,
    error_event: u64,
    io: u64,
}

impl Errors {
    fn count(&self) -> u64 {
        self.status + self.no_done + self.error_event + self.io
    }
}

/// What completed during one second of the run.
#[derive(Default)]
struct Second {
    ok: u64,
    errors: u64,
    ttft: Vec<Duration>,
    backends: std::collections::BTreeMap<String, u64>,
}

impl Totals {
    fn merge(&mut self, other: Totals) {
        self.ttft.extend(other.ttft);
        self.gaps.extend(other.gaps);
        self.total.extend(other.total);
        self.chunks += other.chunks;
        self.streams += other.streams;
        self.errors.status += other.errors.status;
        self.errors.no_done += other.errors.no_done;
        self.errors.error_event += other.errors.error_event;
        self.errors.io += other.errors.io;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        if self.seconds.len() < other.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), Second::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.ok += theirs.ok;
            mine.errors += theirs.errors;
            mine.ttft.extend(theirs.ttft);
            for (backend, n) in theirs.backends {
                *mine.backends.entry(backend).or_default() += n;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = serde_json::json!({
        "model": args.model,
        "messages": [{"role": "user", "content": "Say something."}],
        "stream": true,
    })
    .to_string();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.concurrency.max(1));
    let started = Instant::now();
    let deadline = started + args.duration;
    let done = AtomicU64::new(0);
    let running = AtomicBool::new(true);
    let totals = std::thread::scope(|scope| {
        let progress = (!args.quiet).then(|| scope.spawn(|| progress(&args, &done, &running)));
        let shares: Vec<_> = (0..threads)
            .map(|thread| {
                let clients =
                    args.concurrency / threads + usize::from(thread < args.concurrency % threads);
                let (args, body, done) = (&args, &body, &done);
                scope.spawn(move || run_share(args, body, clients, started, deadline, done))
            })
            .collect();
        let mut totals = Totals::default();
        let mut failed = None;
        for share in shares {
            match share.join().expect("a load thread panicked") {
                Ok(share) => totals.merge(share),
                Err(error) => failed = Some(error),
            }
        }
        let elapsed = started.elapsed();
        running.store(false, Ordering::Relaxed);
        if let Some(progress) = progress {
            progress.join().expect("the progress thread panicked");
        }
        failed.map_or(Ok((totals, elapsed)), Err)
    })?;
    let (mut totals, elapsed) = totals;
    if totals.streams == 0 {
        bail!("no stream completed ({} errors)", totals.errors.count());
    }
    if let Some(failure) = &totals.first_failure {
        eprintln!("first failure: {failure}");
    }
    report(&args, elapsed, &mut totals);
    if !args.quiet {
        eprint!("{}", summary(&totals, elapsed));
    }
    if let Some(path) = &args.svg {
        chart::latency_cdf(path, &args.label, &totals.ttft, &totals.total)?;
    }
    Ok(())
}

/// One thread's share of the clients, on a runtime of its own: a client's task never moves
/// between threads, so the generator spends its time on requests rather than on waking and
/// stealing work across cores (which kept it below what a direct connection can take).
fn run_share(
    args: &Args,
    body: &str,
    clients: usize,
    started: Instant,
    deadline: Instant,
    done: &AtomicU64,
) -> anyhow::Result<Totals> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for a load thread")?;
    runtime.block_on(async {
        let workers = (0..clients).map(|_| async {
            worker(
                client::Client::new(&args.url, &args.key, body)?,
                started,
                deadline,
                done,
            )
            .await
        });
        let mut totals = Totals::default();
        for result in futures_util::future::join_all(workers).await {
            totals.merge(result?);
        }
        Ok(totals)
    })
}

/// A progress bar on stderr (drawn only on a terminal), redrawn until `running` turns false.
fn progress(args: &Args, done: &AtomicU64, running: &AtomicBool) {
    let seconds = args.duration.as_secs().max(1);
    let bar = indicatif::ProgressBar::new(seconds).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    while running.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let elapsed = started.elapsed();
        bar.set_position(elapsed.as_secs().min(seconds));
        let streams = done.load(Ordering::Relaxed);
        bar.set_message(format!(
            "{streams} streams, {:.0}/s",
            streams as f64 / elapsed.as_secs_f64().max(0.001)
        ));
    }
    bar.finish_and_clear();
}

/// The run as a table for a person (the JSON line is for programs).
fn summary(totals: &Totals, elapsed: Duration) -> String {
    let e = totals.errors;
    let rows = [
        ("streams", format!("{}", totals.streams)),
        (
            "streams/s",
            format!("{:.1}", totals.streams as f64 / elapsed.as_secs_f64()),
        ),
        (
            "time to first token p50 / p90 / p99",
            format!(
                "{:.3} / {:.3} / {:.3} ms",
                quantile_ms(&totals.ttft, 0.5),
                quantile_ms(&totals.ttft, 0.9),
                quantile_ms(&totals.ttft, 0.99)
            ),
        ),
        (
            "gap between events p50 / p99",
            format!(
                "{:.3} / {:.3} ms",
                quantile_ms(&totals.gaps, 0.5),
                quantile_ms(&totals.gaps, 0.99)
            ),
        ),
        (
            "whole stream p50 / p99",
            format!(
                "{:.3} / {:.3} ms",
                quantile_ms(&totals.total, 0.5),
                quantile_ms(&totals.total, 0.99)
            ),
        ),
        (
            "errors (status / no [DONE] / error event / connection)",
            format!(
                "{} / {} / {} / {}",
                e.status, e.no_done, e.error_event, e.io
            ),
        ),
    ];
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}

async fn worker(
    mut client: client::Client,
    started: Instant,
    deadline: Instant,
    done: &AtomicU64,
) -> anyhow::Result<Totals> {
    let mut totals = Totals::default();
    while Instant::now() < deadline {
        let result = tokio::time::timeout_at(deadline + Duration::from_secs(30), client.stream())
            .await
            .unwrap_or_else(|_| Err(client::Failure::Io(anyhow::anyhow!("timed out"))));
        let index = started.elapsed().as_secs() as usize;
        if totals.seconds.len() <= index {
            totals.seconds.resize_with(index + 1, Second::default);
        }
        match result {
            Ok(stream) => {
                done.fetch_add(1, Ordering::Relaxed);
                totals.streams += 1;
                totals.ttft.push(stream.ttft);
                totals.total.push(stream.total);
                totals.chunks += u64::from(stream.chunks);
                totals.gaps.extend(stream.gaps);
                let second = &mut totals.seconds[index];
                second.ok += 1;
                second.ttft.push(stream.ttft);
                *second.backends.entry(stream.backend).or_default() += 1;
            }
            Err(failure) => {
                totals
                    .first_failure
                    .get_or_insert_with(|| failure.describe());
                match failure {
                    client::Failure::Status(_) => totals.errors.status += 1,
                    client::Failure::NoDone => totals.errors.no_done += 1,
                    client::Failure::ErrorEvent => totals.errors.error_event += 1,
                    client::Failure::Io(_) => totals.errors.io += 1,
                }
                totals.seconds[index].errors += 1;
            }
        }
    }
    Ok(totals)
}

/// The `p` quantile (0..1) of sorted `values`, in milliseconds.
fn quantile_ms(values: &[Duration], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i].as_secs_f64() * 1000.0
}

fn report(args: &Args, elapsed: Duration, totals: &mut Totals) {
    if args.timeline {
        for (t, second) in totals.seconds.iter_mut().enumerate() {
            second.ttft.sort_unstable();
            let p99 = quantile_ms(&second.ttft, 0.99);
            let backends = serde_json::to_string(&second.backends).expect("map serialises");
            println!(
                "{{\"label\":\"{}\",\"second\":{t},\"ok\":{},\"errors\":{},\"ttft_ms_p99\":{p99:.3},\"backends\":{backends}}}",
                args.label, second.ok, second.errors
            );
        }
    }
    totals.ttft.sort_unstable();
    totals.gaps.sort_unstable();
    totals.total.sort_unstable();
    let rate = totals.streams as f64 / elapsed.as_secs_f64();
    let e = totals.errors;
    println!(
        "{{\"label\":\"{}\",\"concurrency\":{},\"streams\":{},\"errors\":{},\"errors_by_kind\":{{\"status\":{},\"no_done\":{},\"error_event\":{},\"io\":{}}},\"streams_per_s\":{:.1},\"ttft_ms_p50\":{:.3},\"ttft_ms_p90\":{:.3},\"ttft_ms_p99\":{:.3},\"gap_ms_p50\":{:.3},\"gap_ms_p99\":{:.3},\"total_ms_p50\":{:.3},\"total_ms_p99\":{:.3},\"chunks_per_stream\":{:.1}}}",
        args.label,
        args.concurrency,
        totals.streams,
        e.count(),
        e.status,
        e.no_done,
        e.error_event,
        e.io,
        rate,
        quantile_ms(&totals.ttft, 0.5),
        quantile_ms(&totals.ttft, 0.9),
        quantile_ms(&totals.ttft, 0.99),
        quantile_ms(&totals.gaps, 0.5),
        quantile_ms(&totals.gaps, 0.99),
        quantile_ms(&totals.total, 0.5),
        quantile_ms(&totals.total, 0.99),
        totals.chunks as f64 / totals.streams as f64,
    );
}
