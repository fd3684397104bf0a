//! The real `sluicegate` binary, for behaviour that belongs to the process: signals, exit
//! codes, the CLI. Its address is read from the JSON "listening" log line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_sluicegate");

pub struct RunningBinary {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line the process wrote to stdout (its log) so far.
    logs: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

impl RunningBinary {
    /// Starts `sluicegate --config` with `yaml` (listening on port 0) and waits until it listens.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_env(yaml, &[]).await
    }

    /// As `start`, with extra environment variables for the process.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Self {
        let mut config = tempfile::NamedTempFile::new().expect("temp file");
        config.write_all(yaml.as_bytes()).expect("write config");
        let mut child = Command::new(BINARY)
            .arg("--config")
            .arg(config.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next_line()
                .await
                .expect("read log")
                .expect("binary logs before exiting");
            logs.lock().expect("lock").push(line.clone());
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "listening" {
                let addr = entry["fields"]["addr"]
                    .as_str()
                    .expect("listening line has addr");
                break addr.parse().expect("addr parses");
            }
        };
        let collected = logs.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "drains the child's log so it never blocks on a full pipe"
        )]
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().expect("lock").push(line);
            }
        });
        Self {
            child,
            addr,
            logs,
            _config: config,
        }
    }

    /// The log lines written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("lock").clone()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("child is running");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "signal delivered");
    }
}

/// Runs `sluicegate ARGS... --config FILE` (FILE holding `yaml`) with `env` and returns
/// (success, stdout, stderr).
pub async fn run_cli(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut config = tempfile::NamedTempFile::new().expect("temp file");
    config.write_all(yaml.as_bytes()).expect("write config");
    let output = Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(config.path())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
