//! No secret reaches a place an operator or a client can read: `Debug` output of the running
//! gateway, error bodies, logs.

use sluicegate::Gateway;

#[test]
fn the_backend_key_is_not_printable_through_debug() {
    // Any variable that is surely set will do as the "key".
    let key = std::env::var("PATH").expect("PATH is set");
    assert!(key.len() > 4, "a recognisable value");
    let yaml = "models: [{name: m, backends: [\
        {name: plain, kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: PATH}, \
        {name: tls, kind: openai, base_url: 'https://127.0.0.1:9/v1', api_key_env: PATH}]}]\n\
        redis: {url: 'redis://:hunter2-redis-password@127.0.0.1:9'}";
    let config = sluicegate::config::parse(yaml).expect("valid config");
    let gateway = Gateway::build(&config).expect("gateway builds");
    // Also as the numbers of a byte list, which is how `Vec<u8>` prints.
    let as_bytes = format!("{:?}", key.as_bytes());
    let as_bytes = as_bytes.trim_matches(['[', ']']);
    for printed in [format!("{config:?}"), format!("{gateway:?}")] {
        assert!(!printed.contains(&key), "the key leaked into Debug output");
        assert!(
            !printed.contains(as_bytes),
            "the key's bytes leaked into Debug output"
        );
        assert!(
            !printed.contains("Bearer"),
            "an authorization header leaked: {printed}"
        );
    }
}

#[tokio::test]
async fn no_log_line_carries_a_key_a_prompt_or_a_completion() {
    use crate::support::binary::RunningBinary;
    use crate::support::*;

    let backend_key = "sk-backend-secret-7f3a9c";
    let upstream = MockUpstream::stream_tokens(&["zanzibar ", "completion "])
        .keep_alive()
        .start()
        .await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: debug}}\ntiers: {{basic: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: up, kind: openai, base_url: '{}', \
         api_key_env: SLUICEGATE_TEST_BACKEND_KEY}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        upstream.base_url(),
        sluicegate::auth::hash_key(KEY)
    );
    let gateway =
        RunningBinary::start_with_env(&yaml, &[("SLUICEGATE_TEST_BACKEND_KEY", backend_key)]).await;
    let mut body = chat_body(true);
    body["messages"][0]["content"] = "the quokka prompt words".into();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = http()
        .post(format!("{}/v1/chat/completions", gateway.base()))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&body)
        .send()
        .await
        .expect("gateway answers")
        .text()
        .await
        .expect("body");
    assert!(answer.contains("zanzibar"), "the answer came through");
    let refused = post_chat(&gateway.base(), "sk-wrong-key-5d1e", &body).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some(format!("Bearer {backend_key}").as_str()),
        "the backend got its key"
    );

    let logs = within(ms(5_000), "the access log line", async {
        loop {
            let logs = gateway.logs();
            if logs
                .iter()
                .filter(|l| l.contains("sluicegate::access"))
                .count()
                >= 2
            {
                return logs;
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let text = logs.join("\n");
    assert!(
        text.contains(r#""key_id":"full""#),
        "the key id is logged: {text}"
    );
    let access: serde_json::Value = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["target"] == "sluicegate::access" && line["fields"]["status"] == 200)
        .expect("the streamed request's access line");
    let fields = &access["fields"];
    assert_eq!(fields["backend"], "up");
    assert_eq!(fields["attempts"], 1);
    assert_eq!(fields["hedged"], false);
    assert_eq!(fields["trace_id"], trace_id, "the caller's trace: {access}");
    assert_eq!(fields["usage_source"], "upstream", "{access}");
    assert!(
        fields["ttft_ms"].as_f64().is_some(),
        "time to first token: {access}"
    );
    assert!(
        fields["completion_tokens"].as_u64().is_some(),
        "tokens: {access}"
    );
    for secret in [
        KEY,
        backend_key,
        "sk-wrong-key-5d1e",
        &sluicegate::auth::hash_key(KEY),
        "quokka",
        "zanzibar",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} reached the log:\n{text}"
        );
    }
}
