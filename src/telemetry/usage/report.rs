//! `sluicegate usage`: a day's totals read where the gateway keeps them (Redis when the
//! configuration has it, else the running gateway's `/usage`), printed as a table or JSON.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::redis::RedisUsage;
use super::{Day, DayUsage};
use crate::config::Config;

/// How long the command waits for Redis or the gateway.
const WAIT: Duration = Duration::from_secs(5);

/// The totals of `day` (today when `None`), for every key or only `key`.
pub async fn fetch(
    config: &Config,
    day: Option<&str>,
    key: Option<&str>,
) -> anyhow::Result<DayUsage> {
    let day = match day {
        Some(text) => Day::parse(text)
            .with_context(|| format!("--day {text:?} is not a date such as 2026-11-30"))?,
        None => Day::today(),
    };
    match &config.redis {
        Some(redis) => {
            let read = async {
                let store = RedisUsage::connect(redis).await?;
                store.read(day, key).await
            };
            tokio::time::timeout(WAIT, read)
                .await
                .context("Redis did not answer within 5 s")?
                .context("reading usage from Redis")
        }
        None => from_gateway(config, &day, key).await,
    }
}

/// Without Redis the totals live in the gateway: asks its `/usage` (on the metrics listener
/// when there is one).
async fn from_gateway(config: &Config, day: &Day, key: Option<&str>) -> anyhow::Result<DayUsage> {
    let addr = reachable(
        config
            .telemetry
            .metrics_listen
            .unwrap_or(config.server.listen),
    );
    let mut url = reqwest::Url::parse(&format!("http://{addr}/usage"))?;
    url.query_pairs_mut().append_pair("day", day.as_str());
    if let Some(key) = key {
        url.query_pairs_mut().append_pair("key", key);
    }
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("asking the gateway at {addr} (is it running?)"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        anyhow::bail!(
            "the gateway answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("the gateway's /usage answer is not usage JSON")
}

/// A listen address as a client reaches it: a wildcard means this machine.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

/// The totals as an aligned table, one row per key.
pub fn table(usage: &DayUsage) -> String {
    let rows: Vec<Vec<String>> = usage
        .keys
        .iter()
        .map(|key| {
            vec![
                usage.day.to_string(),
                key.key_id.clone(),
                key.requests.to_string(),
                key.prompt_tokens.to_string(),
                key.completion_tokens.to_string(),
                key.total_tokens.to_string(),
            ]
        })
        .collect();
    crate::table::render(
        &[
            "day",
            "key_id",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ],
        &rows,
        2,
    )
}
