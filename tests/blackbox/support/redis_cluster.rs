//! `RedisCluster`: a real three-master Redis Cluster on loopback (`redis-server
//! --cluster-enabled yes` three times, joined by `redis-cli --cluster create`), and the
//! operations the tests do to it: find a key's master, move a slot, kill a master.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

/// `redis-cli -p PORT ARGS...`, its stdout.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli is installed with redis-server");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl RedisCluster {
    pub async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.path()
                        .join(format!("nodes-{port}.conf"))
                        .display()
                        .to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server starts");
            children.push(Some(child));
        }
        for port in &ports {
            let mut answered = false;
            for _ in 0..200 {
                if cli(*port, &["PING"]).await == "PONG" {
                    answered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(answered, "redis-server on {port} never answered PING");
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create");
        let cluster = Self {
            ports,
            children,
            _dir: dir,
        };
        cluster.until_state("ok").await;
        cluster
    }

    /// The URL every node is named in.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }

    /// Waits until `CLUSTER INFO` on a live node reports `cluster_state:STATE`.
    pub async fn until_state(&self, state: &str) {
        let wanted = format!("cluster_state:{state}");
        for _ in 0..400 {
            for port in self.live_ports() {
                if cli(port, &["CLUSTER", "INFO"]).await.contains(&wanted) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the cluster never reached {wanted}");
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, child)| child.is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// The slot of `key` and the (port, node id) of the master serving it.
    pub async fn owner_of(&self, key: &str) -> (u16, (u16, String)) {
        let port = self.live_ports()[0];
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .await
            .parse()
            .expect("a slot number");
        let nodes = cli(port, &["CLUSTER", "NODES"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if serves {
                let node_port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a node address");
                return (slot, (node_port, fields[0].to_owned()));
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// Moves `slot` with its keys from its master to another one, as resharding does: clients
    /// meet `ASK` while it moves and `MOVED` after.
    pub async fn move_slot(&self, key: &str) -> u16 {
        let (slot, (from_port, from_id)) = self.owner_of(key).await;
        let to_port = *self
            .ports
            .iter()
            .find(|p| **p != from_port)
            .expect("another node");
        let to_id = cli(to_port, &["CLUSTER", "MYID"]).await;
        let slot_text = slot.to_string();
        cli(
            to_port,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        )
        .await;
        cli(
            from_port,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        )
        .await;
        for round in 0.. {
            assert!(round < 100, "slot {slot} would not empty");
            let keys = cli(from_port, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]).await;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let to_text = to_port.to_string();
            args.extend([to_text.as_str(), "", "0", "5000", "KEYS"]);
            args.extend(keys);
            cli(from_port, &args).await;
        }
        for port in &self.ports {
            cli(*port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]).await;
        }
        to_port
    }

    /// Kills the master on `port` (as a crash would).
    pub async fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).expect("a node");
        if let Some(mut child) = self.children[index].take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}
