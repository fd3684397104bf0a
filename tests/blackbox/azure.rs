//! `kind: azure`: the deployment's path and `api-version`, the key in `api-key`, Azure's
//! stream (its prompt-filter chunk included) relayed in the client's names, a content-filter
//! refusal told as a 400 with the filter's message, and a 429's `retry-after-ms` honoured.

use serde_json::json;

use crate::support::binary::RunningBinary;
use crate::support::*;

const AZURE_KEY: &str = "azure-secret-key-123";

/// A gateway (the real binary, for its environment) whose `test-model` is the Azure
/// deployment `gpt4o` at `upstream`.
async fn azure_gateway(upstream: &MockUpstream) -> RunningBinary {
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json}}\ntiers: {{basic: {{}}}}\n\
         upstream: {{max_attempts: 1}}\n\
         models: [{{name: test-model, backends: [{{name: az, kind: azure, base_url: 'http://{}/', deployment: gpt4o, api_version: 2024-10-21, api_key_env: AZURE_TEST_KEY, apis: [chat, embeddings]}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
        upstream.addr,
        sluicegate::auth::hash_key(KEY)
    );
    RunningBinary::start_with_env(&yaml, &[("AZURE_TEST_KEY", AZURE_KEY)]).await
}

#[tokio::test]
async fn an_azure_deployment_is_called_by_its_path_and_key_and_streams_in_the_clients_names() {
    let upstream = MockUpstream::reply(replaying("azure-chat.sse"))
        .start()
        .await;
    let gateway = azure_gateway(&upstream).await;
    let text = chat_text(&gateway.base(), KEY, &chat_body(true)).await;
    assert_eq!(content_of(&text), "Hello from Azure — ok");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        !text.contains("gpt-4o-2024-11-20"),
        "the deployment's model is renamed"
    );

    let seen = &upstream.requests()[0];
    assert!(
        seen.request_line
            .starts_with("POST /openai/deployments/gpt4o/chat/completions?api-version=2024-10-21 "),
        "{}",
        seen.request_line
    );
    assert_eq!(seen.header("api-key"), Some(AZURE_KEY));
    assert_eq!(
        seen.header("authorization"),
        None,
        "Azure takes its key in api-key"
    );
}

#[tokio::test]
async fn azures_content_filter_is_a_400_with_the_filters_message_and_its_429_wait_is_kept() {
    let filtered = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}},
    }});
    let upstream = MockUpstream::reply(Reply::Status {
        status: 400,
        body: filtered.to_string(),
        headers: vec![],
    })
    .start()
    .await;
    let gateway = azure_gateway(&upstream).await;
    let (status, error) = error_of(post_chat(&gateway.base(), KEY, &chat_body(false)).await).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("content management policy")),
        "{error}"
    );

    upstream.set_reply(Reply::Status {
        status: 429,
        body: r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded the token rate limit."}}"#.into(),
        headers: vec![("retry-after-ms".into(), "1500".into())],
    });
    let response = post_chat(&gateway.base(), KEY, &chat_body(false)).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after-ms"], "1500");
    assert_eq!(
        response.headers()["retry-after"],
        "2",
        "rounded up to whole seconds"
    );
}

#[tokio::test]
async fn check_config_knows_what_azure_needs() {
    let rows = [
        (
            "kind: azure, base_url: 'https://r.openai.azure.com/', api_version: 2024-10-21",
            "deployment: required for `kind: azure`",
        ),
        (
            "kind: azure, base_url: 'https://r.openai.azure.com/', deployment: gpt4o",
            "api_version: required for `kind: azure`",
        ),
        (
            "kind: azure, base_url: 'https://r.openai.azure.com/', deployment: 'a/b', api_version: v",
            "deployment: letters, digits",
        ),
        (
            "kind: openai, base_url: 'https://h/v1', deployment: gpt4o",
            "deployment: only for `kind: azure`",
        ),
        (
            "kind: azure, base_url: 'https://r.openai.azure.com/', deployment: d, api_version: 2024-10-21, apis: [responses]",
            "apis: `kind: azure` serves chat, embeddings and completions",
        ),
        (
            "kind: azure, base_url: 'https://r.openai.azure.com/', deployment: d, api_version: 2024-06-01",
            "api_version: must be 2024-09-01-preview or later",
        ),
    ];
    for (backend, expected) in rows {
        let yaml = format!("models: [{{name: m, backends: [{{name: b, {backend}}}]}}]\n");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), yaml).expect("write");
        let (ok, _, stderr) = crate::support::binary::run_cli(
            "{}",
            &["check-config", file.path().to_str().expect("UTF-8")],
            &[],
        )
        .await;
        assert!(!ok && stderr.contains(expected), "{backend}: {stderr}");
    }
}
