//! `GET /metrics`: the Prometheus exposition after a scripted mix of requests, read from the
//! real binary (its own process, so the counters are exactly this test's).

use crate::support::binary::RunningBinary;
use crate::support::*;

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\n\
         tiers: {{basic: {{requests_per_minute: 2}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 3, pace: 1ms}}}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        sluicegate::auth::hash_key(KEY)
    );
    let gateway = RunningBinary::start(&yaml).await;
    let base = gateway.base();
    for stream in [true, false] {
        let response = post_chat(&base, KEY, &chat_body(stream)).await;
        assert_eq!(response.status(), 200);
        let processing = response.headers().get("openai-processing-ms");
        assert_eq!(
            processing.is_some_and(|v| v.to_str().is_ok_and(|v| v.parse::<u64>().is_ok())),
            !stream,
            "openai-processing-ms on non-streamed answers, as OpenAI sends it"
        );
        let _ = response.text().await;
    }
    assert_eq!(post_chat(&base, KEY, &chat_body(false)).await.status(), 429);
    assert_eq!(
        post_chat(&base, "sk-wrong", &chat_body(false))
            .await
            .status(),
        401
    );
    let unknown = http()
        .get(format!("{base}/v1/nothing"))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);

    let response = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4"),
        "Prometheus text format"
    );
    let text = response.text().await.expect("exposition");
    let requests = |model: &str, status: &str, route: &str| {
        metric_sample(
            &text,
            "sluicegate_requests_total",
            &[("route", route), ("model", model), ("status", status)],
        )
    };
    assert_eq!(
        requests("test-model", "200", "chat_completions"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(requests("test-model", "429", "chat_completions"), Some(1.0));
    assert_eq!(requests("", "401", "chat_completions"), Some(1.0));
    assert_eq!(requests("", "404", "unknown"), Some(1.0));
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_request_duration_seconds_count",
            &[("route", "chat_completions"), ("model", "test-model")]
        ),
        Some(3.0),
        "the histogram moved"
    );
    assert!(
        metric_sample(
            &text,
            "sluicegate_request_duration_seconds_bucket",
            &[
                ("route", "chat_completions"),
                ("model", "test-model"),
                ("le", "0.0001")
            ]
        )
        .is_some(),
        "a bucket below a millisecond: {text}"
    );
    assert_eq!(
        metric_sample(&text, "sluicegate_admissions_total", &[("tier", "basic")]),
        Some(2.0)
    );
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_rate_limited_total",
            &[("tier", "basic"), ("limit", "requests")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sample(&text, "sluicegate_streams_open", &[("model", "test-model")]),
        Some(0.0),
        "the stream opened and closed"
    );
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_upstream_attempts_total",
            &[("backend", "mock"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    // The mock reports 3 completion tokens and 2 prompt tokens ("hello") per answer.
    for (kind, tokens) in [("output", 6.0), ("input", 4.0)] {
        let reported = metric_sample(
            &text,
            "sluicegate_tokens_total",
            &[("model", "test-model"), ("tier", "basic"), ("type", kind)],
        );
        assert_eq!(
            reported,
            Some(tokens),
            "{kind} tokens as the upstream reported"
        );
    }
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_overhead_seconds_count",
            &[("model", "test-model")]
        ),
        Some(3.0),
        "the gateway's own time, for each of the three answers"
    );
    for name in [
        "gen_ai_server_time_to_first_token_seconds_count",
        "gen_ai_server_time_per_output_token_seconds_count",
    ] {
        assert_eq!(
            metric_sample(&text, name, &[("model", "test-model")]),
            Some(1.0),
            "{name}: the one streamed answer"
        );
    }
    assert_eq!(
        metric_sample(
            &text,
            "sluicegate_client_disconnects_total",
            &[("model", "test-model")]
        ),
        None,
        "every client read its answer"
    );
    let resident = metric_sample(&text, "process_resident_memory_bytes", &[]);
    assert!(
        resident.is_some_and(|bytes| bytes > 1e6),
        "process metrics: {resident:?}"
    );
    assert!(metric_sample(&text, "process_open_fds", &[]).is_some_and(|fds| fds > 0.0));
    assert!(
        !text.contains(KEY) && !text.contains("full"),
        "no key and no key id in any label"
    );
}

#[tokio::test]
async fn a_separate_metrics_listener_serves_metrics_and_nothing_else() {
    let yaml = GatewayConfig::mock(1, "1ms")
        .telemetry("{metrics_listen: '127.0.0.1:0'}")
        .yaml();
    let config = sluicegate::config::parse(&yaml).expect("valid config");
    let gateway = sluicegate::Gateway::build(&config).expect("gateway builds");
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (api_addr, metrics_addr) = (
        api.local_addr().expect("addr"),
        metrics.local_addr().expect("addr"),
    );
    #[expect(
        clippy::disallowed_methods,
        reason = "the gateway runs for the whole test"
    )]
    let serving =
        tokio::spawn(gateway.serve_with_metrics(api, Some(metrics), std::future::pending()));

    let get = |url: String| async move { http().get(url).send().await.expect("answer") };
    let scraped = get(format!("http://{metrics_addr}/metrics")).await;
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .expect("text")
            .contains("sluicegate_build_info")
    );
    for path in ["/v1/models", "/healthz", "/readyz"] {
        let response = get(format!("http://{metrics_addr}{path}")).await;
        assert_eq!(
            response.status(),
            404,
            "only /metrics on the metrics listener: {path}"
        );
    }
    let (status, body) = error_of(get(format!("http://{api_addr}/metrics")).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_url")),
        "not exposed with the API when it has a listener of its own"
    );
    serving.abort();
}

/// `text` percent-encoded for a query string.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_and_answers_promql() {
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\ntiers: {{basic: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 2, pace: 1ms}}}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        sluicegate::auth::hash_key(KEY)
    );
    let gateway = RunningBinary::start(&yaml).await;
    for _ in 0..3 {
        assert_eq!(
            post_chat(&gateway.base(), KEY, &chat_body(true))
                .await
                .status(),
            200
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: sluicegate\n    \
             static_configs: [{{targets: ['{}']}}]\n",
            gateway.addr
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs it)");

    let query = "sum(sluicegate_requests_total{route=\"chat_completions\",status=\"200\"})";
    let answered = within(ms(60_000), "Prometheus to scrape the gateway", async {
        loop {
            let url = format!(
                "http://127.0.0.1:{port}/api/v1/query?query={}",
                percent(query)
            );
            if let Ok(response) = http().get(&url).send().await
                && let Ok(body) = response.json::<serde_json::Value>().await
                && let Some(value) = body["data"]["result"][0]["value"][1].as_str()
            {
                return value.to_owned();
            }
            tokio::time::sleep(ms(250)).await;
        }
    })
    .await;
    assert_eq!(answered, "3", "PromQL over the scraped exposition");
}

#[test]
fn the_dashboard_queries_only_series_the_gateway_exports() {
    use sluicegate::telemetry::metrics as m;

    let exported = [
        m::REQUESTS,
        m::REQUEST_DURATION,
        m::OVERHEAD,
        m::TIME_TO_FIRST_TOKEN,
        m::TIME_PER_OUTPUT_TOKEN,
        m::TOKENS,
        m::STREAMS_OPEN,
        m::CLIENT_DISCONNECTS,
        m::HEARTBEATS,
        m::UPSTREAM_ATTEMPTS,
        m::UPSTREAM_ERRORS,
        m::UPSTREAM_RESENDS,
        m::BACKEND_BREAKER_STATE,
        m::HEDGES,
        m::LIMIT_ADMISSIONS,
        m::LIMIT_REJECTIONS,
        m::REDIS_CALLS,
        m::REDIS_DURATION,
        m::REDIS_UP,
        m::BUILD_INFO,
    ];
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/sluicegate.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sluicegate_") || word.starts_with("gen_ai_") {
                    queried.push(word.to_owned());
                }
            }
        }
    }
    assert!(
        queried.len() >= 10,
        "the panels query the gateway: {queried:?}"
    );
    for name in queried {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exported.contains(&base),
            "the dashboard queries {name}, which is not exported"
        );
    }
}
