//! Usage accounting: what a request is charged and logged when its upstream reports usage, and
//! when it does not (counted with the model's tokenizer).

use serde_json::json;
use sluicegate::config::Tokenizer;
use sluicegate::openai::tokens::TokenCounter;

use crate::support::binary::RunningBinary;
use crate::support::*;

fn remaining_tokens(response: &reqwest::Response) -> i64 {
    response.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

/// The access-log lines of requests answered with `status`, once `count` have been written.
async fn access_lines(gateway: &RunningBinary, count: usize) -> Vec<serde_json::Value> {
    within(ms(5_000), "the access log lines", async {
        loop {
            let lines: Vec<serde_json::Value> = gateway
                .logs()
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|line| line["target"] == "sluicegate::access")
                .collect();
            if lines.len() >= count {
                return lines;
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_stream_cut_short_without_usage_is_charged_the_tokenizers_count() {
    let deltas = [
        " extraordinary",
        " circumstances",
        " notwithstanding",
        " 12345678",
        " never",
    ];
    let upstream = MockUpstream::stream_tokens(&deltas)
        .drop_after(4)
        .start()
        .await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\n\
         tiers: {{basic: {{tokens_per_minute: 10000}}}}\n\
         models: [{{name: test-model, tokenizer: o200k_base, backends: [{{name: up, kind: openai, base_url: '{}'}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        upstream.base_url(),
        sluicegate::auth::hash_key(KEY)
    );
    let gateway = RunningBinary::start(&yaml).await;
    // 300 tokens of prompt; the byte estimate would say 600.
    let prompt = "hello ".repeat(300);
    let mut body = chat_body(true);
    body["messages"][0]["content"] = json!(prompt);
    body["max_tokens"] = json!(100);

    let first_admitted = tokio::time::Instant::now();
    let cut = post_chat(&gateway.base(), KEY, &body).await;
    assert_eq!(cut.status(), 200);
    let reserved = 10_000 - remaining_tokens(&cut);
    let text = cut.text().await.expect("body");
    assert!(!text.contains("[DONE]"), "the stream was cut: {text}");

    let o200k = TokenCounter::new(Tokenizer::O200kBase);
    let prompt_tokens = o200k.count(&prompt) + 7;
    let completion_tokens: u64 = deltas[..4].iter().map(|d| o200k.count(d)).sum();
    assert_ne!(
        completion_tokens, 4,
        "the count differs from one token a chunk"
    );

    let lines = access_lines(&gateway, 1).await;
    let fields = &lines[0]["fields"];
    assert_eq!(fields["usage_source"], "tokenizer", "{fields}");
    assert_eq!(fields["prompt_tokens"], prompt_tokens, "{fields}");
    assert_eq!(fields["completion_tokens"], completion_tokens, "{fields}");

    // The same request again: what the first was charged shows in what is left after it.
    let next = post_chat(&gateway.base(), KEY, &body).await;
    // The bucket refills 10,000 tokens a minute meanwhile.
    let refill = (first_admitted.elapsed().as_secs_f64() * 10_000.0 / 60.0).ceil() as i64 + 1;
    let charged = 10_000 - remaining_tokens(&next) - reserved;
    let expected = (prompt_tokens + completion_tokens) as i64;
    assert!(
        (expected - refill..=expected).contains(&charged),
        "charged {charged}, the tokenizer counted {expected} ({refill} refilled meanwhile)"
    );
}

/// `sluicegate usage --config FILE ARGS...`: (success, stdout, stderr).
async fn usage_command(yaml: &str, args: &[&str]) -> (bool, String, String) {
    let args: Vec<&str> = std::iter::once("usage")
        .chain(args.iter().copied())
        .collect();
    crate::support::binary::run_cli(yaml, &args, &[]).await
}

/// The usage JSON once `key` shows `requests` (totals are written once a second).
async fn usage_once(yaml: &str, key: &str, requests: u64) -> serde_json::Value {
    within(ms(10_000), "the usage totals", async {
        loop {
            let (ok, stdout, stderr) = usage_command(yaml, &["--key", key, "--json"]).await;
            assert!(ok, "usage runs: {stderr}");
            let usage: serde_json::Value = serde_json::from_str(&stdout).expect("usage JSON");
            if usage["keys"][0]["requests"] == requests {
                return usage;
            }
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await
}

fn two_keys_yaml(upstream: &str, extra: &str) -> String {
    format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\ntiers: {{basic: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: up, kind: openai, base_url: '{upstream}'}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}, {{id: limited, sha256: {}, tier: basic}}]\n{extra}",
        sluicegate::auth::hash_key(KEY),
        sluicegate::auth::hash_key(OTHER_KEY),
    )
}

#[tokio::test]
async fn the_usage_command_shows_a_keys_daily_totals_from_redis() {
    let redis = RedisServer::spawn().await;
    let upstream = MockUpstream::stream(3).keep_alive().start().await;
    let yaml = two_keys_yaml(
        &upstream.base_url(),
        &format!("redis: {{url: '{}', key_prefix: usagetest}}\n", redis.url()),
    );
    let gateway = RunningBinary::start(&yaml).await;
    for key in [KEY, KEY, KEY, OTHER_KEY] {
        let text = chat_text(&gateway.base(), key, &chat_body(true)).await;
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }

    // The mock reports 5 prompt and 3 completion tokens per answer.
    let usage = usage_once(&yaml, "full", 3).await;
    let today = &usage["day"];
    assert_eq!(
        usage["keys"],
        json!([{"key_id": "full", "requests": 3, "prompt_tokens": 15, "completion_tokens": 9, "total_tokens": 24}])
    );
    let ttl = redis
        .command(&[
            "TTL",
            &format!("usagetest:{{full}}:usage:{}", today.as_str().expect("day")),
        ])
        .await;
    assert!(
        (30 * 86_400..=35 * 86_400).contains(&ttl.as_i64().expect("a TTL")),
        "kept for the retention period: {ttl:?}"
    );

    let (ok, table, _) = usage_command(&yaml, &[]).await;
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one row per key: {table}");
    assert!(lines[0].starts_with("day") && lines[0].contains("total_tokens"));
    let full: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(full[1..], ["full", "3", "15", "9", "24"], "{table}");
    assert!(lines[2].contains("limited"), "{table}");

    let (ok, stdout, _) = usage_command(&yaml, &["--day", "2001-01-01", "--json"]).await;
    assert!(ok);
    assert!(
        stdout.contains(r#""keys": []"#),
        "another day is empty: {stdout}"
    );
    let (ok, _, stderr) = usage_command(&yaml, &["--day", "yesterday"]).await;
    assert!(!ok && stderr.contains("--day"), "{stderr}");
}

#[tokio::test]
async fn without_redis_the_totals_are_served_by_the_gateway_itself() {
    let upstream = MockUpstream::stream(2).keep_alive().start().await;
    let metrics_port = free_port();
    let yaml = two_keys_yaml(
        &upstream.base_url(),
        &format!("telemetry: {{metrics_listen: '127.0.0.1:{metrics_port}'}}\n"),
    );
    let gateway = RunningBinary::start(&yaml).await;
    for _ in 0..2 {
        chat_text(&gateway.base(), KEY, &chat_body(true)).await;
    }
    let usage = usage_once(&yaml, "full", 2).await;
    assert_eq!(usage["keys"][0]["total_tokens"], 14);

    // `/usage` is where `/metrics` is, not on the API listener.
    let api = http()
        .get(format!("{}/usage", gateway.base()))
        .send()
        .await
        .expect("answer");
    assert_eq!(api.status(), 404);
    let bad = http()
        .get(format!(
            "http://127.0.0.1:{metrics_port}/usage?day=tomorrow"
        ))
        .send()
        .await
        .expect("answer");
    let (status, error) = error_of(bad).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("day"))
    );
}

#[tokio::test]
async fn totals_redis_missed_while_down_are_written_once_it_is_back() {
    let mut redis = RedisServer::spawn().await;
    let upstream = MockUpstream::stream(2).keep_alive().start().await;
    let yaml = two_keys_yaml(
        &upstream.base_url(),
        &format!(
            "redis: {{url: '{}', timeout: 50ms, on_error: local}}\n",
            redis.url()
        ),
    );
    let gateway = RunningBinary::start(&yaml).await;
    redis.kill().await;
    for _ in 0..2 {
        chat_text(&gateway.base(), KEY, &chat_body(true)).await;
    }
    // At least one flush fails while Redis is down.
    tokio::time::sleep(ms(1_500)).await;
    redis.start().await;
    let usage = usage_once(&yaml, "full", 2).await;
    assert_eq!(usage["keys"][0]["total_tokens"], 14, "{usage}");
}

#[tokio::test]
async fn a_batch_sent_again_after_an_unclear_reply_counts_once() {
    use sluicegate::telemetry::usage::redis::{Batch, RedisUsage};
    use sluicegate::telemetry::usage::{Day, Totals};

    let redis = RedisServer::spawn().await;
    let yaml = format!(
        "models: [{{name: m, backends: [{{name: b, kind: mock}}]}}]\nredis: {{url: '{}'}}\n",
        redis.url()
    );
    let config = sluicegate::config::parse(&yaml).expect("valid config");
    let store = RedisUsage::connect(config.redis.as_ref().expect("redis"))
        .await
        .expect("connects");
    let batch = Batch {
        day: Day::today(),
        totals: Totals {
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
        },
        id: 7,
    };
    let key: std::sync::Arc<str> = "k".into();
    let retention = std::time::Duration::from_secs(86_400);
    for _ in 0..2 {
        let unconfirmed = store
            .add([(key.clone(), batch.clone())].into(), retention)
            .await;
        assert!(unconfirmed.is_empty());
    }
    let next = Batch { id: 8, ..batch };
    store.add([(key.clone(), next)].into(), retention).await;
    let usage = store.read(Day::today(), Some("k")).await.expect("reads");
    assert_eq!(
        (usage.keys[0].requests, usage.keys[0].total_tokens),
        (2, 30),
        "the repeated batch counted once, the next one too"
    );
}

#[tokio::test]
async fn without_a_metrics_listener_usage_is_served_to_this_machine() {
    let gateway = TestGateway::start(&GatewayConfig::mock(2, "0ms")).await;
    let answer = http()
        .get(gateway.url("/usage"))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200, "a loopback client reads /usage");
    let usage: serde_json::Value = answer.json().await.expect("usage JSON");
    assert!(usage["keys"].is_array(), "{usage}");
}
