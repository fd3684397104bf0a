//! The official OpenAI Python SDK against the real binary (tests/python/sdk_check.py).

use std::path::PathBuf;

use crate::support::binary::RunningBinary;
use crate::support::*;

/// A key allowed one request a minute.
const THROTTLED_KEY: &str = "sk-test-throttled";

/// The Python with the `openai` package: `SLUICEGATE_PYTHON`, else the venv the test script makes.
fn python() -> PathBuf {
    let path = std::env::var_os("SLUICEGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs the OpenAI SDK",
        path.display()
    );
    path
}

#[tokio::test]
async fn openai_python_sdk_streams_completes_and_raises_the_right_errors() {
    let dropping = MockUpstream::stream(10).drop_after(3).start().await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json}}\ntiers: {{basic: {{}}}}\n\
         models:\n  - {{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 5, pace: 1ms}}}}]}}\n  \
         - {{name: other-model, backends: [{{name: up, kind: openai, base_url: '{}'}}]}}\n\
         api_keys:\n  - {{id: full, sha256: {}, tier: basic}}\n  - {{id: limited, sha256: {}, tier: basic, models: [other-model]}}\n  \
           - {{id: throttled, sha256: {}, tier: basic, limits: {{requests_per_minute: 1}}}}\n",
        dropping.base_url(),
        sluicegate::auth::hash_key(KEY),
        sluicegate::auth::hash_key(OTHER_KEY),
        sluicegate::auth::hash_key(THROTTLED_KEY),
    );
    let gateway = RunningBinary::start(&yaml).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_check.py");
    let output = tokio::process::Command::new(python())
        .args([script, &gateway.base(), KEY, OTHER_KEY, THROTTLED_KEY])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("sdk ok"));
}
