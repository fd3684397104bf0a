//! `ConfigFile` -> `Config`: every check names the field it is about, as a path such as
//! `models[2].backends[0].base_url`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use super::file::{
    ApiKeyFile, BackendFile, BackendKindFile, BreakerFile, ConfigFile, LimitsFile, ModelFile,
    RedisFile, ServerFile, StreamFile, TierFile, UpstreamFile,
};
use super::{
    ApiKey, BackendConfig, BackendKind, BreakerConfig, Config, ConfigError, ConfigSource,
    FailureRate, Limits, LogConfig, LogFormat, MockConfig, Model, ModelAccess, OnRedisError,
    OutputCaps, RedisConfig, Secret, ServerConfig, StreamConfig, Tier, UpstreamConfig,
};

/// The smallest header cap hyper accepts for its read buffer.
const MIN_HEADER_BYTES: usize = 8 * 1024;

pub fn validate(file: ConfigFile) -> Result<Config, ConfigError> {
    let tiers = tiers(file.tiers)?;
    let models = file
        .models
        .into_iter()
        .enumerate()
        .map(|(i, m)| model(m, &format!("models[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    unique(models.iter().map(|m| m.name.as_str()), "models", "name")?;
    fallbacks(&models)?;
    let api_keys = api_keys(file.api_keys, &tiers, &models)?;
    let log = LogConfig {
        format: match file.log.format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => {
                return Err(ConfigError::invalid(
                    "log.format",
                    "must be `json` or `text`",
                ));
            }
        },
        level: file.log.level,
    };
    Ok(Config {
        server: server(file.server)?,
        log,
        api_keys,
        tiers,
        models,
        upstream: upstream(file.upstream)?,
        stream: stream(file.stream)?,
        redis: file.redis.map(redis).transpose()?,
        source: ConfigSource::Development,
    })
}

fn server(file: ServerFile) -> Result<ServerConfig, ConfigError> {
    let listen = file.listen.parse().map_err(|_| {
        ConfigError::invalid("server.listen", "must be an address such as 127.0.0.1:8080")
    })?;
    if file.max_header_bytes < MIN_HEADER_BYTES {
        return Err(ConfigError::invalid(
            "server.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES}"),
        ));
    }
    Ok(ServerConfig {
        listen,
        worker_threads: NonZeroUsize::new(file.worker_threads),
        max_concurrent_requests: non_zero(
            file.max_concurrent_requests,
            "server.max_concurrent_requests",
        )?,
        max_body_bytes: non_zero(file.max_body_bytes, "server.max_body_bytes")?,
        max_header_bytes: file.max_header_bytes,
        header_read_timeout: positive(file.header_read_timeout, "server.header_read_timeout")?,
        body_read_timeout: positive(file.body_read_timeout, "server.body_read_timeout")?,
        keep_alive: file.keep_alive,
        shutdown_grace: file.shutdown_grace,
    })
}

fn tiers(file: BTreeMap<String, TierFile>) -> Result<BTreeMap<String, Tier>, ConfigError> {
    file.into_iter()
        .map(|(name, t)| {
            let path = format!("tiers.{name}");
            let limits = LimitsFile {
                requests_per_minute: t.requests_per_minute,
                tokens_per_minute: t.tokens_per_minute,
                concurrent_streams: t.concurrent_streams,
            };
            let default = match t.default_max_tokens {
                Some(n) => non_zero_u64(n, &path, "default_max_tokens")?,
                None => OutputCaps::default().default,
            };
            let max = t
                .max_tokens
                .map(|n| non_zero_u64(n, &path, "max_tokens"))
                .transpose()?;
            let tier = Tier {
                limits: limits_over(Limits::default(), limits, &path)?,
                output: OutputCaps {
                    default: max.map_or(default, |max| default.min(max)),
                    max,
                },
            };
            Ok((name, tier))
        })
        .collect()
}

/// `base` with every limit `file` sets replaced.
fn limits_over(base: Limits, file: LimitsFile, path: &str) -> Result<Limits, ConfigError> {
    let rpm = |n| NonZeroU32::new(n).ok_or_else(|| zero_limit(path, "requests_per_minute"));
    let streams = |n| NonZeroU32::new(n).ok_or_else(|| zero_limit(path, "concurrent_streams"));
    Ok(Limits {
        requests_per_minute: file
            .requests_per_minute
            .map(rpm)
            .transpose()?
            .or(base.requests_per_minute),
        tokens_per_minute: file
            .tokens_per_minute
            .map(|n| non_zero_u64(n, path, "tokens_per_minute"))
            .transpose()?
            .or(base.tokens_per_minute),
        concurrent_streams: file
            .concurrent_streams
            .map(streams)
            .transpose()?
            .or(base.concurrent_streams),
    })
}

fn non_zero_u64(value: u64, path: &str, field: &str) -> Result<NonZeroU64, ConfigError> {
    NonZeroU64::new(value).ok_or_else(|| zero_limit(path, field))
}

fn zero_limit(path: &str, field: &str) -> ConfigError {
    ConfigError::invalid(
        format!("{path}.{field}"),
        "must be at least 1; omit it for no limit",
    )
}

fn api_keys(
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
    if file.id.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.id"),
            "must not be empty",
        ));
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

fn model(file: ModelFile, path: &str) -> Result<Model, ConfigError> {
    if file.name.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    if file.backends.is_empty() {
        return Err(ConfigError::invalid(
            format!("{path}.backends"),
            "needs at least one backend",
        ));
    }
    let default_upstream_model = file.name.clone();
    let backends = file
        .backends
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend(b, &format!("{path}.backends[{i}]"), &default_upstream_model))
        .collect::<Result<Vec<_>, _>>()?;
    unique(
        backends.iter().map(|b| b.name.as_str()),
        &format!("{path}.backends"),
        "name",
    )?;
    Ok(Model {
        name: file.name,
        backends,
        fallbacks: file.fallbacks,
        hedge_after: file
            .hedge_after
            .map(|after| positive(after, &format!("{path}.hedge_after")))
            .transpose()?,
    })
}

/// Every fallback names another configured model.
fn fallbacks(models: &[Model]) -> Result<(), ConfigError> {
    for (i, model) in models.iter().enumerate() {
        for (j, fallback) in model.fallbacks.iter().enumerate() {
            if fallback == &model.name || !models.iter().any(|m| &m.name == fallback) {
                return Err(ConfigError::invalid(
                    format!("models[{i}].fallbacks[{j}]"),
                    format!("`{fallback}` is not another configured model"),
                ));
            }
        }
    }
    Ok(())
}

fn backend(
    file: BackendFile,
    path: &str,
    default_upstream_model: &str,
) -> Result<BackendConfig, ConfigError> {
    let kind = match file.kind {
        BackendKindFile::Openai => {
            if file.mock.is_some() {
                return Err(ConfigError::invalid(
                    format!("{path}.mock"),
                    "only allowed with `kind: mock`",
                ));
            }
            let base_url = file.base_url.ok_or_else(|| {
                ConfigError::invalid(format!("{path}.base_url"), "required for `kind: openai`")
            })?;
            BackendKind::OpenAi {
                base_url: base_url_with_slash(&base_url, &format!("{path}.base_url"))?,
                api_key: file
                    .api_key_env
                    .map(|var| secret_from_env(&var, path))
                    .transpose()?,
            }
        }
        BackendKindFile::Mock => {
            for (field, set) in [
                ("base_url", file.base_url.is_some()),
                ("api_key_env", file.api_key_env.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        format!("{path}.{field}"),
                        "not used by `kind: mock`",
                    ));
                }
            }
            let mock = file.mock.unwrap_or_default();
            BackendKind::Mock(MockConfig {
                tokens: mock.tokens,
                pace: mock.pace,
                first_token_delay: mock.first_token_delay,
            })
        }
    };
    Ok(BackendConfig {
        name: file.name,
        upstream_model: file
            .upstream_model
            .unwrap_or_else(|| default_upstream_model.to_owned()),
        kind,
        weight: NonZeroU32::new(file.weight)
            .ok_or_else(|| ConfigError::invalid(format!("{path}.weight"), "must be at least 1"))?,
        max_inflight: file
            .max_inflight
            .map(|n| non_zero(n, &format!("{path}.max_inflight")))
            .transpose()?,
    })
}

fn base_url_with_slash(raw: &str, path: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ConfigError::invalid(path, format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(
            path,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(ConfigError::invalid(
            path,
            "must not carry a query, fragment or credentials",
        ));
    }
    let mut text = url.to_string();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

fn secret_from_env(var: &str, path: &str) -> Result<Secret, ConfigError> {
    match std::env::var(var) {
        Ok(value) if value.bytes().any(|b| b.is_ascii_control()) => Err(ConfigError::invalid(
            format!("{path}.api_key_env"),
            format!("environment variable `{var}` contains control characters"),
        )),
        Ok(value) if !value.is_empty() => Ok(Secret(value)),
        _ => Err(ConfigError::invalid(
            format!("{path}.api_key_env"),
            format!("environment variable `{var}` is not set"),
        )),
    }
}

fn redis(file: RedisFile) -> Result<RedisConfig, ConfigError> {
    if fred::types::config::Config::from_url(&file.url).is_err() {
        return Err(ConfigError::invalid(
            "redis.url",
            "not a redis://, rediss:// or redis-cluster:// URL",
        ));
    }
    let on_error = match file.on_error.as_str() {
        "local" => OnRedisError::Local,
        "allow" => OnRedisError::Allow,
        "deny" => OnRedisError::Deny,
        _ => {
            return Err(ConfigError::invalid(
                "redis.on_error",
                "must be `local`, `allow` or `deny`",
            ));
        }
    };
    if !file
        .key_prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(ConfigError::invalid(
            "redis.key_prefix",
            "may hold only letters, digits and `-_.:`",
        ));
    }
    Ok(RedisConfig {
        url: file.url,
        timeout: positive(file.timeout, "redis.timeout")?,
        on_error,
        pool_size: non_zero(file.pool_size, "redis.pool_size")?,
        key_prefix: file.key_prefix,
    })
}

fn upstream(file: UpstreamFile) -> Result<UpstreamConfig, ConfigError> {
    Ok(UpstreamConfig {
        connect_timeout: positive(file.connect_timeout, "upstream.connect_timeout")?,
        first_byte_timeout: positive(file.first_byte_timeout, "upstream.first_byte_timeout")?,
        idle_timeout: positive(file.idle_timeout, "upstream.idle_timeout")?,
        total_timeout: positive(file.total_timeout, "upstream.total_timeout")?,
        max_attempts: NonZeroU32::new(file.max_attempts)
            .ok_or_else(|| ConfigError::invalid("upstream.max_attempts", "must be at least 1"))?,
        retry_backoff: file.retry_backoff,
        breaker: breaker(file.breaker)?,
    })
}

fn breaker(file: BreakerFile) -> Result<BreakerConfig, ConfigError> {
    if file.open_for < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "upstream.breaker.open_for",
            "must be at least 1s",
        ));
    }
    if file.max_open_for < file.open_for {
        return Err(ConfigError::invalid(
            "upstream.breaker.max_open_for",
            "must be at least open_for",
        ));
    }
    let failure_rate = match file.failure_rate {
        None => None,
        Some(threshold) if threshold > 0.0 && threshold < 1.0 => {
            if file.failure_rate_window < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    "upstream.breaker.failure_rate_window",
                    "must be at least 1s",
                ));
            }
            Some(FailureRate {
                threshold,
                window: file.failure_rate_window,
                min_requests: file.failure_rate_min_requests,
            })
        }
        Some(_) => {
            return Err(ConfigError::invalid(
                "upstream.breaker.failure_rate",
                "must be between 0 and 1",
            ));
        }
    };
    Ok(BreakerConfig {
        consecutive_failures: NonZeroU32::new(file.consecutive_failures).ok_or_else(|| {
            ConfigError::invalid(
                "upstream.breaker.consecutive_failures",
                "must be at least 1",
            )
        })?,
        open_for: file.open_for,
        max_open_for: file.max_open_for,
        failure_rate,
    })
}

fn stream(file: StreamFile) -> Result<StreamConfig, ConfigError> {
    Ok(StreamConfig {
        heartbeat_interval: positive(file.heartbeat_interval, "stream.heartbeat_interval")?,
        client_stall_timeout: positive(file.client_stall_timeout, "stream.client_stall_timeout")?,
        max_event_bytes: non_zero(file.max_event_bytes, "stream.max_event_bytes")?.get(),
    })
}

fn positive(value: Duration, path: &str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(path, "must be greater than zero"));
    }
    Ok(value)
}

fn non_zero(value: usize, path: &str) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| ConfigError::invalid(path, "must be at least 1"))
}

fn unique<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
    field: &str,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ConfigError::invalid(
                format!("{list}[{i}].{field}"),
                format!("duplicate value `{name}`"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, parse};

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn error_of(yaml: &str) -> String {
        match parse(yaml) {
            Err(ConfigError::Invalid { path, message }) => format!("{path}: {message}"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_offending_field() {
        let model = "models: [{name: m, backends: [{name: b, kind: mock}]}]";
        let rows: [(String, &str); 9] = [
            ("server: {listen: nowhere}".into(), "server.listen: "),
            (
                "server: {max_concurrent_requests: 0}".into(),
                "server.max_concurrent_requests: ",
            ),
            (
                "server: {header_read_timeout: 10 parsecs}".into(),
                "server.header_read_timeout: ",
            ),
            (
                "server: {colour: blue}".into(),
                "server.colour: unknown field `colour`",
            ),
            (
                "models: [{name: m, backends: []}]".into(),
                "models[0].backends: ",
            ),
            (
                "models: [{name: m, backends: [{name: b, kind: openai}]}]".into(),
                "models[0].backends[0].base_url: required",
            ),
            (
                "models: [{name: m, backends: [{name: b, kind: openai, base_url: 'ftp://x'}]}]"
                    .into(),
                "models[0].backends[0].base_url: must be an http",
            ),
            (
                format!(
                    "{model}\ntiers: {{t: {{}}}}\napi_keys: [{{id: k, sha256: {KEY}, tier: nope}}]"
                ),
                "api_keys[0].tier: unknown tier",
            ),
            (
                format!(
                    "{model}\ntiers: {{t: {{}}}}\napi_keys: [{{id: k, sha256: {KEY}, tier: t, models: [x]}}]"
                ),
                "api_keys[0].models[0]: unknown model",
            ),
        ];
        for (yaml, expected) in rows {
            let error = error_of(&yaml);
            assert!(
                error.starts_with(expected),
                "{yaml:?} gave {error:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn missing_secret_env_var_is_reported_with_its_name() {
        let yaml = "models: [{name: m, backends: [{name: b, kind: openai, base_url: 'http://h/v1', \
                    api_key_env: SLUICEGATE_TEST_SURELY_UNSET}]}]";
        assert_eq!(
            error_of(yaml),
            "models[0].backends[0].api_key_env: environment variable `SLUICEGATE_TEST_SURELY_UNSET` is not set"
        );
    }

    #[test]
    fn base_url_gains_a_trailing_slash_and_upstream_model_defaults_to_the_name() {
        let config = parse("models: [{name: m, backends: [{name: b, kind: openai, base_url: 'http://h:8000/v1'}]}]")
            .expect("valid config");
        let backend = &config.models[0].backends[0];
        assert_eq!(backend.upstream_model, "m");
        match &backend.kind {
            crate::config::BackendKind::OpenAi { base_url, .. } => {
                assert_eq!(base_url, "http://h:8000/v1/")
            }
            other => panic!("expected an openai backend, got {other:?}"),
        }
    }
}
