//! Keys created at runtime and revocations, kept in Redis and mirrored in every replica's
//! memory, so checking them costs no Redis call on the request path.
//!
//! Redis holds, all under the hash tag `{auth}` (one Cluster slot, so `write.lua` changes them
//! together): `PREFIX:{auth}:keys` (key id -> JSON record with the key's SHA-256 digest, never
//! the key), `PREFIX:{auth}:revoked` (`jti:ID` or `key:ID` -> until, Unix seconds) and
//! `PREFIX:{auth}:version`, raised by every change. Each replica reads the version four times a
//! second and the whole set only when it moved, so a created or revoked credential takes effect
//! everywhere within about a quarter of a second.
//!
//! While Redis cannot be read (no successful sync for `STALE_AFTER`), `redis.on_error` decides:
//! `local` keeps using the last copy, `allow` also skips revocation checks, `deny` refuses
//! every credential with a 503.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::config::{LimitOverrides, OnRedisError};

const WRITE_LUA: &str = include_str!("write.lua");
/// How often each replica looks for changes.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// Without a successful sync for this long, the copy counts as stale (`redis.on_error`).
const STALE_AFTER: Duration = Duration::from_secs(3);
/// The most runtime keys a replica mirrors (about 200 MB); beyond it the rest are ignored,
/// loudly.
const MAX_MIRRORED_KEYS: usize = 1_000_000;
/// A revocation of a key lasts until this (the year 3000).
pub const FOREVER: u64 = 32_503_680_000;

/// A key created at runtime, as Redis stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    pub tier: String,
    /// Model names, or `["*"]` for all.
    pub models: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; none = never.
    pub expires: Option<u64>,
    /// Limits replacing the tier's (none: the tier's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverrides>,
}

/// What the last sync found.
#[derive(Debug, Default)]
struct Snapshot {
    keys: HashMap<[u8; 32], KeyRecord>,
    revoked_tokens: HashSet<String>,
    revoked_keys: HashSet<String>,
}

/// How a credential fared against the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Good,
    Revoked,
    /// Redis cannot be read and `redis.on_error: deny`.
    Unknown,
}

/// The replica's copy of the runtime keys and revocations.
#[derive(Debug)]
pub struct AuthStore {
    pool: Pool,
    prefix: String,
    on_error: OnRedisError,
    snapshot: RwLock<Arc<Snapshot>>,
    seen_version: Mutex<Option<i64>>,
    synced_at: Mutex<Option<Instant>>,
}

impl AuthStore {
    pub fn new(pool: Pool, prefix: &str, on_error: OnRedisError) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            on_error,
            snapshot: RwLock::default(),
            seen_version: Mutex::default(),
            synced_at: Mutex::default(),
        }
    }

    /// Reads the version and, when it moved, everything. Errors leave the copy as it was.
    pub async fn sync(&self) {
        if let Err(error) = self.try_sync().await {
            tracing::debug!(%error, "runtime keys and revocations not synced");
        }
    }

    async fn try_sync(&self) -> Result<(), fred::error::Error> {
        let client = self.pool.next();
        let version: Option<i64> = client.get(version_key(&self.prefix)).await?;
        let unchanged = *lock(&self.seen_version) == Some(version.unwrap_or(0));
        if !unchanged {
            let records: HashMap<String, String> = client.hgetall(keys_key(&self.prefix)).await?;
            let now = crate::auth::unix_now();
            let revoked: Vec<String> = client
                .zrangebyscore(revoked_key(&self.prefix), now as f64, "+inf", false, None)
                .await?;
            let snapshot = snapshot(records, revoked);
            *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
            *lock(&self.seen_version) = Some(version.unwrap_or(0));
        }
        *lock(&self.synced_at) = Some(Instant::now());
        Ok(())
    }

    /// The runtime key whose digest is `digest`, compared in constant time.
    pub fn find_key(&self, digest: &[u8; 32]) -> Option<KeyRecord> {
        let snapshot = self.current();
        let record = snapshot.keys.get(digest)?;
        let mut stored = [0u8; 32];
        hex::decode_to_slice(&record.sha256, &mut stored).ok()?;
        bool::from(stored.ct_eq(digest)).then(|| record.clone())
    }

    /// Whether the key `key_id` may still be used.
    pub fn key_standing(&self, key_id: &str) -> Standing {
        self.standing(|snapshot| snapshot.revoked_keys.contains(key_id))
    }

    /// Whether a token (with its `jti`, when it has one) may still be used.
    pub fn token_standing(&self, jti: Option<&str>) -> Standing {
        self.standing(|snapshot| jti.is_some_and(|jti| snapshot.revoked_tokens.contains(jti)))
    }

    fn standing(&self, revoked: impl Fn(&Snapshot) -> bool) -> Standing {
        if self.is_stale() {
            match self.on_error {
                OnRedisError::Local => {}
                OnRedisError::Allow => return Standing::Good,
                OnRedisError::Deny => return Standing::Unknown,
            }
        }
        if revoked(&self.current()) {
            Standing::Revoked
        } else {
            Standing::Good
        }
    }

    fn is_stale(&self) -> bool {
        lock(&self.synced_at).is_none_or(|at| at.elapsed() > STALE_AFTER)
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Builds the copy from the stored records and the unexpired revocations.
fn snapshot(records: HashMap<String, String>, revoked: Vec<String>) -> Snapshot {
    if records.len() > MAX_MIRRORED_KEYS {
        tracing::error!(
            keys = records.len(),
            mirrored = MAX_MIRRORED_KEYS,
            "more runtime keys than a replica mirrors; the rest are refused"
        );
    }
    // Sorted, so every replica keeps the same ones past the cap.
    let mut records: Vec<(String, String)> = records.into_iter().collect();
    records.sort_unstable();
    let now = crate::auth::unix_now();
    let mut keys = HashMap::new();
    for (id, json) in records.into_iter().take(MAX_MIRRORED_KEYS) {
        let Ok(record) = serde_json::from_str::<KeyRecord>(&json) else {
            tracing::error!(key_id = %id, "a runtime key record cannot be read; it is ignored");
            continue;
        };
        if record.expires.is_some_and(|at| at <= now) {
            continue;
        }
        let mut digest = [0u8; 32];
        if hex::decode_to_slice(&record.sha256, &mut digest).is_ok() {
            keys.insert(digest, record);
        }
    }
    let mut snapshot = Snapshot {
        keys,
        ..Snapshot::default()
    };
    for member in revoked {
        if let Some(jti) = member.strip_prefix("jti:") {
            snapshot.revoked_tokens.insert(jti.to_owned());
        } else if let Some(id) = member.strip_prefix("key:") {
            snapshot.revoked_keys.insert(id.to_owned());
        }
    }
    snapshot
}

pub(super) fn keys_key(prefix: &str) -> String {
    format!("{prefix}:{{auth}}:keys")
}

pub(super) fn revoked_key(prefix: &str) -> String {
    format!("{prefix}:{{auth}}:revoked")
}

pub(super) fn version_key(prefix: &str) -> String {
    format!("{prefix}:{{auth}}:version")
}

/// The script every change goes through (`create`, `revoke_key`, `revoke_jti`).
pub(super) fn write_script() -> Script {
    Script::from_lua(WRITE_LUA)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
