//! Usage totals in Redis: `PREFIX:{key}:usage:DAY` (a hash of `requests`, `prompt_tokens`,
//! `completion_tokens`, added to atomically by `add.lua`) and `PREFIX:usage:DAY:keys` (the
//! day's key ids), both expiring after the retention period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use tokio::time::Instant;

use super::{Day, DayUsage, Totals};
use crate::config::RedisConfig;
use crate::telemetry::metrics;

const ADD_LUA: &str = include_str!("add.lua");
/// The largest count the script takes (its arithmetic is exact below it).
const MAX_COUNT: u64 = (1 << 53) - 1;

/// Writes and reads usage through a Redis pool (the limiter's, or the CLI's own).
#[derive(Debug)]
pub struct RedisUsage {
    pool: Pool,
    prefix: String,
    add: Script,
}

impl RedisUsage {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            add: Script::from_lua(ADD_LUA),
        }
    }

    /// A pool of its own for `config`, connected (for `sluicegate usage`).
    pub async fn connect(config: &RedisConfig) -> Result<Self, fred::error::Error> {
        let pool = Builder::from_config(Config::from_url(&config.url)?).build_pool(1)?;
        let _connections = pool.init().await?;
        Ok(Self::new(pool, &config.key_prefix))
    }

    fn totals_key(&self, key_id: &str, day: &Day) -> String {
        format!("{}:{{{key_id}}}:usage:{day}", self.prefix)
    }

    fn index_key(&self, day: &Day) -> String {
        format!("{}:usage:{day}:keys", self.prefix)
    }

    /// Adds each key's totals to `day`. Returns what could not be written, to be tried again.
    pub async fn add(
        &self,
        day: &Day,
        totals: HashMap<Arc<str>, Totals>,
        retention: Duration,
    ) -> Result<(), HashMap<Arc<str>, Totals>> {
        let started = Instant::now();
        let client = self.pool.next();
        let ttl = retention.as_secs().min(MAX_COUNT);
        let ids: Vec<String> = totals.keys().map(|id| id.to_string()).collect();
        let indexed = async {
            client.sadd::<(), _, _>(self.index_key(day), ids).await?;
            client
                .expire::<(), _>(self.index_key(day), ttl as i64, None)
                .await
        };
        if let Err(error) = indexed.await {
            tracing::warn!(%error, "usage totals not written; kept for the next flush");
            metrics::record_redis_call("usage", "unreachable", started.elapsed());
            return Err(totals);
        }
        let mut unwritten = HashMap::new();
        for (key_id, delta) in totals {
            let args = vec![
                delta.requests.min(MAX_COUNT),
                delta.prompt_tokens.min(MAX_COUNT),
                delta.completion_tokens.min(MAX_COUNT),
                ttl,
            ];
            let keys = vec![self.totals_key(&key_id, day)];
            if let Err(error) = self
                .add
                .evalsha_with_reload::<i64, _, _>(client, keys, args)
                .await
            {
                tracing::warn!(%error, key_id = %key_id, "usage totals not written; kept for the next flush");
                unwritten.insert(key_id, delta);
            }
        }
        let result = if unwritten.is_empty() { "ok" } else { "error" };
        metrics::record_redis_call("usage", result, started.elapsed());
        if unwritten.is_empty() {
            Ok(())
        } else {
            Err(unwritten)
        }
    }

    /// The totals of `day`, for every key in the day's index or only `key`.
    pub async fn read(&self, day: Day, key: Option<&str>) -> Result<DayUsage, fred::error::Error> {
        let client = self.pool.next();
        let ids: Vec<String> = match key {
            Some(key) => vec![key.to_owned()],
            None => client.smembers(self.index_key(&day)).await?,
        };
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let fields: HashMap<String, u64> = client.hgetall(self.totals_key(&id, &day)).await?;
            if fields.is_empty() {
                continue;
            }
            let get = |name: &str| fields.get(name).copied().unwrap_or(0);
            rows.push((
                id,
                Totals {
                    requests: get("requests"),
                    prompt_tokens: get("prompt_tokens"),
                    completion_tokens: get("completion_tokens"),
                },
            ));
        }
        Ok(DayUsage::from_totals(
            day,
            rows.iter().map(|(id, totals)| (id.as_str(), *totals)),
            key,
        ))
    }
}
