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
    let charged = 10_000 - remaining_tokens(&next) - reserved;
    let expected = (prompt_tokens + completion_tokens) as i64;
    assert!(
        (expected - 10..=expected).contains(&charged),
        "charged {charged}, the tokenizer counted {expected} (a little refill allowed)"
    );
}
