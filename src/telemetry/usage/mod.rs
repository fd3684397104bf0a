//! Usage per key: requests, prompt and completion tokens, totalled per UTC day.
//!
//! Requests only add to an in-process map when they end (one short lock, no I/O); a flush once
//! a second moves the deltas out. With Redis they go to one hash per key and day
//! (`PREFIX:{key}:usage:YYYY-MM-DD`, hash-tagged like the key's limits, with the retention as
//! its TTL) and a per-day index of keys, so every replica adds to the same totals and
//! `sluicegate usage` reads them from Redis; a batch Redis did not confirm is sent again under
//! the same id, which the script applies once.
//! Without Redis the totals stay in the process for the retention period and are served as
//! JSON on `/usage`. A request is counted on the day of the flush that writes it (at most a
//! second after it ended).

mod day;
pub mod redis;
pub mod report;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use day::Day;
use redis::Batch;

use crate::openai::Usage;

/// One key's totals for one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

/// A day's totals per key, as `/usage` and `sluicegate usage --json` print them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    pub day: Day,
    pub keys: Vec<KeyUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl KeyUsage {
    fn new(key_id: &str, totals: Totals) -> Self {
        Self {
            key_id: key_id.to_owned(),
            requests: totals.requests,
            prompt_tokens: totals.prompt_tokens,
            completion_tokens: totals.completion_tokens,
            total_tokens: totals
                .prompt_tokens
                .saturating_add(totals.completion_tokens),
        }
    }
}

impl DayUsage {
    /// Rows sorted by key, only `key` when given.
    fn from_totals<'a>(
        day: Day,
        totals: impl Iterator<Item = (&'a str, Totals)>,
        key: Option<&str>,
    ) -> Self {
        let mut keys: Vec<KeyUsage> = totals
            .filter(|(id, _)| key.is_none_or(|key| key == *id))
            .map(|(id, totals)| KeyUsage::new(id, totals))
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Self { day, keys }
    }
}

/// Where the totals live.
#[derive(Debug)]
enum Store {
    /// In this process: day -> key -> totals, pruned past the retention.
    Local(Mutex<BTreeMap<Day, HashMap<Arc<str>, Totals>>>),
    Redis(redis::RedisUsage),
}

/// The per-key usage of this gateway.
#[derive(Debug)]
pub struct UsageLedger {
    /// Totals of requests that ended since the last flush.
    pending: Mutex<HashMap<Arc<str>, Totals>>,
    /// Batches Redis did not confirm, sent again as they are until it does; a key with one
    /// here keeps its newer totals pending meanwhile (one batch per key in flight).
    unconfirmed: Mutex<HashMap<Arc<str>, Batch>>,
    store: Store,
    retention: Duration,
}

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read usage from Redis: {0}")]
pub struct ReadError(#[from] fred::error::Error);

impl UsageLedger {
    /// Totals kept in this process.
    pub fn local(retention: Duration) -> Self {
        Self::with(Store::Local(Mutex::default()), retention)
    }

    /// Totals kept in Redis.
    pub fn shared(redis: redis::RedisUsage, retention: Duration) -> Self {
        Self::with(Store::Redis(redis), retention)
    }

    fn with(store: Store, retention: Duration) -> Self {
        Self {
            pending: Mutex::default(),
            unconfirmed: Mutex::default(),
            store,
            retention,
        }
    }

    /// A request of `key_id` ended having used `usage` (none when nothing was counted).
    pub fn record(&self, key_id: &Arc<str>, usage: Option<Usage>) {
        let usage = usage.unwrap_or_default();
        lock(&self.pending)
            .entry(key_id.clone())
            .or_default()
            .add(Totals {
                requests: 1,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            });
    }

    /// Moves what ended since the last flush into the store, dated today.
    pub async fn flush(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let today = Day::today();
        match &self.store {
            Store::Local(days) => {
                let mut days = lock(days);
                let totals = days.entry(today).or_default();
                for (key, delta) in pending {
                    totals.entry(key).or_default().add(delta);
                }
                let oldest = Day::before_now(self.retention);
                days.retain(|day, _| *day >= oldest);
            }
            Store::Redis(redis) => {
                let mut batches = std::mem::take(&mut *lock(&self.unconfirmed));
                let mut waiting = HashMap::new();
                for (key, totals) in pending {
                    match batches.entry(key) {
                        Entry::Occupied(unconfirmed) => {
                            waiting.insert(unconfirmed.key().clone(), totals);
                        }
                        Entry::Vacant(slot) => {
                            let day = today.clone();
                            slot.insert(Batch {
                                day,
                                totals,
                                id: fastrand::u64(..),
                            });
                        }
                    }
                }
                if !waiting.is_empty() {
                    let mut pending = lock(&self.pending);
                    for (key, totals) in waiting {
                        pending.entry(key).or_default().add(totals);
                    }
                }
                if batches.is_empty() {
                    return;
                }
                let unconfirmed = redis.add(batches, self.retention).await;
                if !unconfirmed.is_empty() {
                    tracing::warn!(
                        keys = unconfirmed.len(),
                        "usage totals not confirmed by Redis; sent again at the next flush"
                    );
                }
                lock(&self.unconfirmed).extend(unconfirmed);
            }
        }
    }

    /// Totals not yet in the store (Redis did not confirm them), for the shutdown log.
    pub fn unwritten(&self) -> usize {
        lock(&self.pending).len() + lock(&self.unconfirmed).len()
    }

    /// The totals of `day`, for every key or only `key`.
    pub async fn read(&self, day: Day, key: Option<&str>) -> Result<DayUsage, ReadError> {
        match &self.store {
            Store::Local(days) => {
                self.flush().await;
                let days = lock(days);
                let totals = days.get(&day).into_iter().flatten();
                Ok(DayUsage::from_totals(
                    day.clone(),
                    totals.map(|(id, totals)| (&**id, *totals)),
                    key,
                ))
            }
            Store::Redis(redis) => Ok(redis.read(day, key).await?),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_totals_add_up_per_key_and_day() {
        let ledger = UsageLedger::local(Duration::from_secs(86_400));
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let usage = |prompt, completion| {
            Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: u64::saturating_add(prompt, completion),
            })
        };
        ledger.record(&a, usage(10, 5));
        ledger.flush().await;
        ledger.record(&a, usage(1, u64::MAX));
        ledger.record(&b, None);
        let today = ledger.read(Day::today(), None).await.expect("local reads");
        assert_eq!(
            today.keys,
            vec![
                KeyUsage {
                    key_id: "a".into(),
                    requests: 2,
                    prompt_tokens: 11,
                    completion_tokens: u64::MAX,
                    total_tokens: u64::MAX,
                },
                KeyUsage::new(
                    "b",
                    Totals {
                        requests: 1,
                        ..Totals::default()
                    }
                ),
            ]
        );
        let only_b = ledger.read(Day::today(), Some("b")).await.expect("reads");
        assert_eq!(only_b.keys.len(), 1);
        let other_day = Day::parse("2001-01-01").expect("a date");
        assert!(
            ledger
                .read(other_day, None)
                .await
                .expect("reads")
                .keys
                .is_empty()
        );
    }
}
