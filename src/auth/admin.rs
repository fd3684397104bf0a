//! The operator's side of runtime credentials (`sluicegate keys create|list|revoke`,
//! `sluicegate revoke --jti`): the same Redis records the replicas mirror, changed through the
//! same script. Needs `redis` in the configuration; keys are printed once and stored only as
//! digests.

use std::time::Duration;

use anyhow::{Context, bail};
use fred::prelude::*;
use fred::types::scripts::Script;

use super::key_format;
use super::store::{FOREVER, KeyRecord, keys_key, revoked_key, version_key, write_script};
use crate::auth::{hash_key, unix_now};
use crate::config::{Config, KEY_ID_RULE, LimitOverrides, is_plain_key_id, limits_over};

/// How long an operator command waits for Redis.
const WAIT: Duration = Duration::from_secs(5);

/// A connection to the Redis the configuration names, for one command.
#[derive(Debug)]
pub struct AuthAdmin {
    client: Client,
    prefix: String,
    write: Script,
}

/// A key just created: the key itself (shown once) and what is stored.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: String,
    pub record: KeyRecord,
}

impl AuthAdmin {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let Some(redis) = &config.redis else {
            bail!(
                "runtime keys and revocations live in Redis, and the configuration has no \
                 `redis` section"
            );
        };
        let client =
            Builder::from_config(fred::types::config::Config::from_url(&redis.url)?).build()?;
        tokio::time::timeout(WAIT, async {
            let _connection = client.init().await?;
            Ok::<_, fred::error::Error>(())
        })
        .await
        .context("Redis did not answer within 5 s")?
        .context("connecting to Redis")?;
        Ok(Self {
            client,
            prefix: redis.key_prefix.clone(),
            write: write_script(),
        })
    }

    /// Creates a key on `tier` for `models` (`*` = all), expiring after `expires`, with
    /// `limits` replacing the tier's where set.
    pub async fn create(
        &self,
        config: &Config,
        tier: &str,
        models: &[String],
        expires: Option<Duration>,
        id: Option<String>,
        limits: LimitOverrides,
    ) -> anyhow::Result<CreatedKey> {
        let Some(tier_limits) = config.tiers.get(tier).map(|t| t.limits) else {
            bail!("--tier {tier:?} is not a configured tier");
        };
        limits_over(tier_limits, limits, "--limits")?;
        for model in models.iter().filter(|m| *m != "*") {
            if !config.models.iter().any(|m| &m.name == model) {
                bail!("--models names {model:?}, which is not a configured model");
            }
        }
        let id = match id {
            Some(id) => {
                check_id(&id)?;
                if config.api_keys.iter().any(|k| k.id == id) {
                    bail!("--id {id:?} is already a key in the configuration file");
                }
                id
            }
            None => format!("key-{}", &key_format::generate()[6..18]),
        };
        let key = key_format::generate();
        let now = unix_now();
        let record = KeyRecord {
            id: id.clone(),
            sha256: hash_key(&key),
            tier: tier.to_owned(),
            models: if models.is_empty() {
                vec!["*".to_owned()]
            } else {
                models.to_vec()
            },
            created: now,
            expires: expires.map(|after| now.saturating_add(after.as_secs())),
            limits: (limits != LimitOverrides::default()).then_some(limits),
        };
        let revoked: Option<f64> = self
            .within(
                self.client
                    .zscore(revoked_key(&self.prefix), format!("key:{id}")),
            )
            .await?;
        if revoked.is_some() {
            bail!("the id {id:?} belonged to a revoked key; choose another");
        }
        let json = serde_json::to_string(&record)?;
        let created = self.run(&["create", &id, &json]).await?;
        if created == 0 {
            bail!("a runtime key with id {id:?} exists already");
        }
        Ok(CreatedKey { key, record })
    }

    /// Every runtime key, by id.
    pub async fn list(&self) -> anyhow::Result<Vec<KeyRecord>> {
        let records: std::collections::HashMap<String, String> = self
            .within(self.client.hgetall(keys_key(&self.prefix)))
            .await?;
        let mut keys: Vec<KeyRecord> = records
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    /// Revokes the key `id` (runtime, or from `config`'s file) on every replica.
    pub async fn revoke_key(&self, config: &Config, id: &str) -> anyhow::Result<()> {
        check_id(id)?;
        let runtime: bool = self
            .within(self.client.hexists(keys_key(&self.prefix), id))
            .await?;
        if !runtime && !config.api_keys.iter().any(|key| key.id == id) {
            bail!("no runtime key and no key in the configuration has the id {id:?}");
        }
        self.run(&["revoke_key", id, &FOREVER.to_string()]).await?;
        Ok(())
    }

    /// Revokes the token `jti` until `until` (Unix seconds).
    pub async fn revoke_token(&self, jti: &str, until: u64) -> anyhow::Result<()> {
        if jti.is_empty() || jti.len() > 256 {
            bail!("--jti must be 1 to 256 characters");
        }
        let now = unix_now();
        if until <= now {
            bail!("--until is in the past");
        }
        self.run(&["revoke_jti", jti, &until.to_string(), &now.to_string()])
            .await?;
        Ok(())
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<i64> {
        let keys = vec![
            keys_key(&self.prefix),
            revoked_key(&self.prefix),
            version_key(&self.prefix),
        ];
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        self.within(
            self.write
                .evalsha_with_reload::<i64, _, _>(&self.client, keys, args),
        )
        .await
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> anyhow::Result<T> {
        Ok(tokio::time::timeout(WAIT, call)
            .await
            .context("Redis did not answer within 5 s")??)
    }
}

/// Ids go into logs and Redis key names: the same rule as the file's.
fn check_id(id: &str) -> anyhow::Result<()> {
    if !is_plain_key_id(id) {
        bail!("a key id {KEY_ID_RULE}");
    }
    Ok(())
}

/// `keys list` as a table: never a key or a digest.
pub fn keys_table(
    keys: &[KeyRecord],
    last_used: &std::collections::HashMap<String, crate::telemetry::usage::Day>,
) -> String {
    let time = |secs: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            .to_string()
    };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.tier.clone(),
                key.models.join(","),
                time(key.created),
                key.expires.map_or_else(|| "never".to_owned(), time),
                last_used
                    .get(&key.id)
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
            ]
        })
        .collect();
    crate::table::render(
        &["id", "tier", "models", "created", "expires", "last_used"],
        &rows,
        6,
    )
}
