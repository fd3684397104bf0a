//! Where stored responses live: response id -> the backend that made it, the key that asked for
//! it, and the context a continuation carries. A follow-up (`previous_response_id`) and every
//! read, delete or cancel of a stored response go to that backend, and only for that key.
//!
//! With Redis (`redis.url`) the map is shared by every replica (`PREFIX:resp:ID`, expiring after
//! `upstream.response_affinity_ttl`), so a follow-up routes alike whichever replica takes it;
//! without, it is kept in process, bounded (the oldest records go first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::openai::responses::ResponseId;

/// How many records the in-process map keeps.
const MAX_LOCAL_RECORDS: usize = 100_000;

/// The backend that stored a response, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The model as the client named it.
    pub model: String,
    /// The model whose pool holds the backend (a fallback's, when one answered).
    pub pool: String,
    pub backend: String,
    /// The key that created it: the only one that may use it.
    pub key_id: String,
    /// Tokens a continuation carries as context (the response's input plus output); unknown
    /// until the response finished.
    pub context_tokens: Option<u64>,
}

/// The response id -> owner map.
#[derive(Debug)]
pub enum Affinity {
    Local(LocalAffinity),
    Shared(RedisAffinity),
}

impl Affinity {
    /// Shared through `pool` (keys under `prefix`) when limits are, else in process.
    pub fn new(redis: Option<(&Pool, &str, Duration)>, ttl: Duration) -> Self {
        match redis {
            Some((pool, prefix, timeout)) => Self::Shared(RedisAffinity {
                pool: pool.clone(),
                prefix: prefix.to_owned(),
                timeout,
                ttl,
            }),
            None => Self::Local(LocalAffinity::new(ttl)),
        }
    }

    /// Notes where `id` lives. A failure is logged: the response itself is not lost, only the
    /// way back to it.
    pub async fn record(&self, id: &ResponseId, owner: &Owner) {
        match self {
            Self::Local(local) => local.record(id, owner.clone()),
            Self::Shared(redis) => {
                if let Err(error) = redis.record(id, owner).await {
                    tracing::warn!(%error, response_id = %id, "response affinity not recorded");
                }
            }
        }
    }

    /// Where `id` lives, if it is known.
    pub async fn owner(&self, id: &ResponseId) -> Result<Option<Owner>, GatewayError> {
        match self {
            Self::Local(local) => Ok(local.owner(id)),
            Self::Shared(redis) => redis.owner(id).await.map_err(|error| {
                tracing::warn!(%error, "response affinity not read");
                GatewayError::AffinityUnavailable
            }),
        }
    }

    /// Forgets `id` (its response was deleted).
    pub async fn forget(&self, id: &ResponseId) {
        match self {
            Self::Local(local) => local.forget(id),
            Self::Shared(redis) => {
                if let Err(error) = redis.forget(id).await {
                    tracing::warn!(%error, response_id = %id, "response affinity not removed");
                }
            }
        }
    }
}

/// The in-process map: records expire after the TTL, and past `MAX_LOCAL_RECORDS` the oldest
/// go first.
#[derive(Debug)]
pub struct LocalAffinity {
    ttl: Duration,
    records: Mutex<LocalRecords>,
}

#[derive(Debug, Default)]
struct LocalRecords {
    by_id: HashMap<ResponseId, (Owner, Instant)>,
    /// Ids in the order they were first recorded.
    order: VecDeque<ResponseId>,
}

impl LocalAffinity {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            records: Mutex::default(),
        }
    }

    fn record(&self, id: &ResponseId, owner: Owner) {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records
            .by_id
            .insert(id.clone(), (owner, now + self.ttl))
            .is_none()
        {
            records.order.push_back(id.clone());
        }
        while let Some(oldest) = records.order.front().cloned() {
            let expired = records
                .by_id
                .get(&oldest)
                .is_none_or(|(_, until)| *until <= now);
            if !expired && records.order.len() <= MAX_LOCAL_RECORDS {
                break;
            }
            records.order.pop_front();
            records.by_id.remove(&oldest);
        }
    }

    fn owner(&self, id: &ResponseId) -> Option<Owner> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .by_id
            .get(id)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(owner, _)| owner.clone())
    }

    fn forget(&self, id: &ResponseId) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.by_id.remove(id).is_some() {
            records.order.retain(|kept| kept != id);
        }
    }
}

/// The shared map: one string key per response, JSON-encoded, expiring after the TTL.
#[derive(Debug)]
pub struct RedisAffinity {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
}

/// Why a Redis call of the map failed.
#[derive(Debug, thiserror::Error)]
enum RedisFailure {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error("timed out")]
    TimedOut,
}

impl RedisAffinity {
    fn key(&self, id: &ResponseId) -> String {
        format!("{}:resp:{id}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, RedisFailure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisFailure::TimedOut),
        }
    }

    async fn record(&self, id: &ResponseId, owner: &Owner) -> Result<(), RedisFailure> {
        let value = serde_json::to_string(owner).expect("invariant: an owner serialises");
        let seconds = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let client = self.pool.next();
        self.bounded(client.set::<(), _, _>(
            self.key(id),
            value,
            Some(Expiration::EX(seconds)),
            None,
            false,
        ))
        .await
    }

    async fn owner(&self, id: &ResponseId) -> Result<Option<Owner>, RedisFailure> {
        let client = self.pool.next();
        let value: Option<String> = self.bounded(client.get(self.key(id))).await?;
        // A record that does not parse (written by something else) is no record.
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn forget(&self, id: &ResponseId) -> Result<(), RedisFailure> {
        let client = self.pool.next();
        self.bounded(client.del::<(), _>(self.key(id))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(backend: &str) -> Owner {
        Owner {
            model: "m".into(),
            pool: "m".into(),
            backend: backend.into(),
            key_id: "k".into(),
            context_tokens: Some(7),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn local_records_expire_and_are_forgotten() {
        let affinity = Affinity::new(None, Duration::from_secs(60));
        let id = ResponseId::parse("resp_1").expect("valid");
        affinity.record(&id, &owner("a")).await;
        assert_eq!(affinity.owner(&id).await.expect("local"), Some(owner("a")));
        affinity.record(&id, &owner("b")).await;
        assert_eq!(
            affinity.owner(&id).await.expect("local"),
            Some(owner("b")),
            "a later record replaces"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(affinity.owner(&id).await.expect("local"), None, "expired");

        affinity.record(&id, &owner("a")).await;
        affinity.forget(&id).await;
        assert_eq!(affinity.owner(&id).await.expect("local"), None);
    }

    #[test]
    fn the_local_map_is_bounded() {
        let local = LocalAffinity::new(Duration::from_secs(60));
        for i in 0..MAX_LOCAL_RECORDS + 5 {
            let id = ResponseId::parse(&format!("resp_{i}")).expect("valid");
            local.record(&id, owner("a"));
        }
        let records = local.records.lock().expect("not poisoned");
        assert_eq!(records.by_id.len(), MAX_LOCAL_RECORDS);
        assert!(
            !records
                .by_id
                .contains_key(&ResponseId::parse("resp_0").expect("valid"))
        );
    }
}
