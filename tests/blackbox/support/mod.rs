//! The black-box harness: the gateway in-process on 127.0.0.1:0 (or the real binary), a
//! scripted upstream that records what it saw, and small client helpers.

pub mod binary;
pub mod client;
pub mod gateway;
pub mod otlp;
pub mod raw_upstream;
pub mod redis;
pub mod redis_cluster;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

pub use client::*;
pub use gateway::{GatewayConfig, TestGateway};
pub use raw_upstream::{RawConn, RawUpstream};
pub use redis::{RedisServer, integer};
pub use upstream::{MockBuilder, MockUpstream, Reply, golden, replaying};
pub use upstream::{Shape, StreamScript};

pub const KEY: &str = "sk-test-key";
pub const OTHER_KEY: &str = "sk-test-limited";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Waits for `future`, failing the test with `what` when it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}
