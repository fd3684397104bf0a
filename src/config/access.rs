//! Tiers, their limits and the API keys on them: who may use which models, and how much.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroU64};

use super::file::{ApiKeyFile, LimitsFile, TierFile};
use super::validate::unique;
use super::{
    ApiKey, ConfigError, Limits, MAX_CONCURRENT_STREAMS, MAX_TOKENS_BOUND, MAX_TOKENS_PER_MINUTE,
    Model, ModelAccess, OutputCaps, Tier,
};

pub(super) fn tiers(
    file: BTreeMap<String, TierFile>,
) -> Result<BTreeMap<String, Tier>, ConfigError> {
    file.into_iter()
        .map(|(name, t)| {
            let path = format!("tiers.{name}");
            let limits = LimitsFile {
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
                concurrent_streams: t.concurrent_streams,
            };
            let default = match t.default_max_tokens {
                Some(n) => bounded_u64(n, MAX_TOKENS_BOUND, &path, "default_max_tokens")?,
                None => OutputCaps::default().default,
            };
            let max = match t.max_tokens {
                Some(n) => bounded_u64(n, MAX_TOKENS_BOUND, &path, "max_tokens")?,
                None => OutputCaps::default().max.max(default),
            };
            let tier = Tier {
                limits: limits_over(Limits::default(), limits, &path)?,
                output: OutputCaps {
                    default: default.min(max),
                    max,
                },
            };
            Ok((name, tier))
        })
        .collect()
}

/// `base` with every limit `file` sets replaced.
/// `base` with every limit `file` sets replaced, each checked against the same bounds as in
/// the file (`path` names where the overrides came from).
pub fn limits_over(base: Limits, file: LimitsFile, path: &str) -> Result<Limits, ConfigError> {
    let rpm = |n| NonZeroU32::new(n).ok_or_else(|| zero_limit(path, "requests_per_minute"));
    let streams = |n: u32| {
        bounded_u64(
            n.into(),
            MAX_CONCURRENT_STREAMS.into(),
            path,
            "concurrent_streams",
        )
        .map(|n| NonZeroU32::new(n.get() as u32).expect("invariant: bounded by a u32"))
    };
    Ok(Limits {
        requests_per_minute: file
            .requests_per_minute
            .map(rpm)
            .transpose()?
            .or(base.requests_per_minute),
        tokens_per_minute: file
            .tokens_per_minute
            .map(|n| bounded_u64(n, MAX_TOKENS_PER_MINUTE, path, "tokens_per_minute"))
            .transpose()?
            .or(base.tokens_per_minute),
        concurrent_streams: file
            .concurrent_streams
            .map(streams)
            .transpose()?
            .or(base.concurrent_streams),
    })
}

/// `value` in `1..=max`, or an error naming `path.field`.
fn bounded_u64(value: u64, max: u64, path: &str, field: &str) -> Result<NonZeroU64, ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(
            format!("{path}.{field}"),
            format!("must be at most {max}"),
        ));
    }
    NonZeroU64::new(value).ok_or_else(|| zero_limit(path, field))
}

fn zero_limit(path: &str, field: &str) -> ConfigError {
    ConfigError::invalid(
        format!("{path}.{field}"),
        "must be at least 1; omit it for no limit",
    )
}

/// What a key id may be: it names Redis keys (`{key_id}` hash tags, where a brace would move
/// a key's limits to another slot), log fields and CLI arguments, and JWT subjects live apart
/// as `jwt:...` (so no `:` here).
pub const KEY_ID_RULE: &str = "must be 1 to 64 letters, digits, '-', '_' or '.'";

/// Whether `id` follows `KEY_ID_RULE`.
pub fn is_plain_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn api_keys(
    file: Vec<ApiKeyFile>,
    tiers: &BTreeMap<String, Tier>,
    models: &[Model],
) -> Result<Vec<ApiKey>, ConfigError> {
    let keys = file
        .into_iter()
        .enumerate()
        .map(|(i, key)| api_key(key, &format!("api_keys[{i}]"), tiers, models))
        .collect::<Result<Vec<_>, _>>()?;
    unique(keys.iter().map(|k| k.id.as_str()), "api_keys", "id")?;
    let digests: Vec<String> = keys.iter().map(|k| hex::encode(k.sha256)).collect();
    unique(digests.iter().map(String::as_str), "api_keys", "sha256")?;
    Ok(keys)
}

fn api_key(
    file: ApiKeyFile,
    path: &str,
    tiers: &BTreeMap<String, Tier>,
    models: &[Model],
) -> Result<ApiKey, ConfigError> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(file.sha256.trim(), &mut sha256).map_err(|_| {
        ConfigError::invalid(
            format!("{path}.sha256"),
            "must be 64 hex digits (the output of `sluicegate hash-key KEY`)",
        )
    })?;
    let Some(tier) = tiers.get(&file.tier) else {
        return Err(ConfigError::invalid(
            format!("{path}.tier"),
            format!("unknown tier `{}`; define it under `tiers`", file.tier),
        ));
    };
    let limits = limits_over(tier.limits, file.limits, &format!("{path}.limits"))?;
    let access = if file.models.iter().any(|m| m == "*") {
        ModelAccess::All
    } else {
        for (j, name) in file.models.iter().enumerate() {
            if !models.iter().any(|m| &m.name == name) {
                return Err(ConfigError::invalid(
                    format!("{path}.models[{j}]"),
                    format!("unknown model `{name}`"),
                ));
            }
        }
        ModelAccess::Only(file.models.into_iter().collect::<BTreeSet<_>>())
    };
    if !is_plain_key_id(&file.id) {
        return Err(ConfigError::invalid(format!("{path}.id"), KEY_ID_RULE));
    }
    Ok(ApiKey {
        id: file.id,
        sha256,
        tier: file.tier,
        models: access,
        limits,
        output: tier.output,
    })
}
