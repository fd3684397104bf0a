//! The real `sluicegate` binary, for behaviour that belongs to the process: signals, exit
//! codes, the CLI. Its address is read from the JSON "listening" log line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_sluicegate");

pub struct RunningBinary {
    pub child: Child,
    pub addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl RunningBinary {
    /// Starts `sluicegate --config` with `yaml` (listening on port 0) and waits until it listens.
    pub async fn start(yaml: &str) -> Self {
        let mut config = tempfile::NamedTempFile::new().expect("temp file");
        config.write_all(yaml.as_bytes()).expect("write config");
        let mut child = Command::new(BINARY)
            .arg("--config")
            .arg(config.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next_line()
                .await
                .expect("read log")
                .expect("binary logs before exiting");
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
        #[expect(
            clippy::disallowed_methods,
            reason = "drains the child's log so it never blocks on a full pipe"
        )]
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr,
            _config: config,
        }
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
