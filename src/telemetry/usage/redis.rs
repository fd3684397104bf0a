//! Usage totals in Redis: `PREFIX:{key}:usage:DAY` (a hash of `requests`, `prompt_tokens`,
//! `completion_tokens`, added to atomically by `add.lua`) and `PREFIX:usage:DAY:keys` (the
//! day's key ids), both expiring after the retention period, and per replica and key the id
//! of the last batch applied (`PREFIX:{key}:usage:last:REPLICA`, a day), which makes a retried
//! batch count once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use futures_util::future::join_all;
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
    /// This process among the replicas writing the same totals.
    replica: u64,
}

/// One key's totals of a day, sent as a unit under its id until Redis confirms it.
#[derive(Debug, Clone)]
pub struct Batch {
    pub day: Day,
    pub totals: Totals,
    pub id: u64,
}

impl RedisUsage {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            add: Script::from_lua(ADD_LUA),
            replica: fastrand::u64(..),
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

    /// Where this replica notes the last batch it applied for `key_id`.
    fn last_batch_key(&self, key_id: &str) -> String {
        format!("{}:{{{key_id}}}:usage:last:{}", self.prefix, self.replica)
    }

    /// Adds each batch to its key's totals for its day, all at once. Returns the batches whose
    /// reply did not confirm them, to be sent again as they are (the script applies a batch id
    /// once, so a batch that did land is not added twice).
    pub async fn add(
        &self,
        batches: HashMap<Arc<str>, Batch>,
        retention: Duration,
    ) -> HashMap<Arc<str>, Batch> {
        let started = Instant::now();
        let client = self.pool.next();
        let ttl = retention.as_secs().min(MAX_COUNT);
        let mut days: HashMap<&Day, Vec<String>> = HashMap::new();
        for (key_id, batch) in &batches {
            days.entry(&batch.day).or_default().push(key_id.to_string());
        }
        let indexed = days.into_iter().map(|(day, ids)| async move {
            client.sadd::<(), _, _>(self.index_key(day), ids).await?;
            client
                .expire::<(), _>(self.index_key(day), ttl as i64, None)
                .await
                .map(|()| day.clone())
        });
        let indexed: Vec<Day> = join_all(indexed)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let sends = batches.into_iter().map(|(key_id, batch)| {
            let indexed = indexed.contains(&batch.day);
            async move {
                let sent = if indexed {
                    let keys = vec![
                        self.totals_key(&key_id, &batch.day),
                        self.last_batch_key(&key_id),
                    ];
                    let args = vec![
                        batch.totals.requests.min(MAX_COUNT).to_string(),
                        batch.totals.prompt_tokens.min(MAX_COUNT).to_string(),
                        batch.totals.completion_tokens.min(MAX_COUNT).to_string(),
                        ttl.to_string(),
                        batch.id.to_string(),
                    ];
                    self.add
                        .evalsha_with_reload::<i64, _, _>(client, keys, args)
                        .await
                        .is_ok()
                } else {
                    false
                };
                (!sent).then_some((key_id, batch))
            }
        });
        let unconfirmed: HashMap<Arc<str>, Batch> =
            join_all(sends).await.into_iter().flatten().collect();
        let result = if unconfirmed.is_empty() {
            "ok"
        } else {
            "error"
        };
        metrics::record_redis_call("usage", result, started.elapsed());
        unconfirmed
    }

    /// The most recent day within `retention` each key was used on, from the days' indexes.
    pub async fn last_used(
        &self,
        retention: Duration,
    ) -> Result<HashMap<String, Day>, fred::error::Error> {
        let client = self.pool.next();
        let days = (0..=retention.as_secs() / 86_400)
            .map(|back| Day::before_now(Duration::from_secs(back * 86_400)));
        let reads = days.map(|day| async move {
            let ids: Vec<String> = client.smembers(self.index_key(&day)).await?;
            Ok::<_, fred::error::Error>((day, ids))
        });
        let mut last = HashMap::new();
        // Newest first, so the first day seen for a key is its last.
        for read in join_all(reads).await {
            let (day, ids) = read?;
            for id in ids {
                last.entry(id).or_insert_with(|| day.clone());
            }
        }
        Ok(last)
    }

    /// The totals of `day`, for every key in the day's index or only `key`.
    pub async fn read(&self, day: Day, key: Option<&str>) -> Result<DayUsage, fred::error::Error> {
        let client = self.pool.next();
        let ids: Vec<String> = match key {
            Some(key) => vec![key.to_owned()],
            None => client.smembers(self.index_key(&day)).await?,
        };
        let reads = ids.into_iter().map(|id| async {
            let fields: HashMap<String, u64> = client.hgetall(self.totals_key(&id, &day)).await?;
            Ok::<_, fred::error::Error>((id, fields))
        });
        let mut rows = Vec::new();
        for read in join_all(reads).await {
            let (id, fields) = read?;
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
