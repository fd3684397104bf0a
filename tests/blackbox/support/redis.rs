//! `RedisServer`: a real `redis-server` on a free loopback port, killed on drop.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn spawn() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let mut server = Self { port, child: None };
        server.start().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: no shutdown, nothing saved).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub async fn start(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// Runs one command (`["ZCARD", "key"]`) on a fresh connection and returns its reply.
    pub async fn command(&self, args: &[&str]) -> fred::types::Value {
        use fred::prelude::*;
        let client = Builder::from_config(Config::from_url(&self.url()).expect("redis URL"))
            .build()
            .expect("redis client builds");
        client.init().await.expect("redis connects");
        let (name, rest) = args.split_first().expect("a command name");
        let reply = client
            .custom::<Value, _>(
                fred::types::CustomCommand::new(
                    name.to_string(),
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                rest.to_vec(),
            )
            .await
            .unwrap_or_else(|e| Value::String(format!("error: {e}").into()));
        let _ = client.quit().await;
        reply
    }

    /// How many times `EVALSHA` has run since the server started.
    pub async fn evalsha_calls(&self) -> u64 {
        let info = self.command(&["INFO", "commandstats"]).await;
        let text = info.as_string().unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    async fn ping(&self) -> bool {
        let Ok(mut socket) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut reply = [0u8; 7];
        socket.write_all(b"PING\r\n").await.is_ok()
            && socket.read_exact(&mut reply).await.is_ok()
            && &reply == b"+PONG\r\n"
    }
}

/// The integer of a Redis reply.
pub fn integer(value: fred::types::Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("an integer reply: {value:?}"))
}
