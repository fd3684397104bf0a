//! `ConfigFile` -> `Config`: every check names the field it is about, as a path such as
//! `models[2].backends[0].base_url`. Models live in `models.rs`, tiers and keys in
//! `access.rs`; the server, upstream, stream and Redis sections here.

use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use super::access::{api_keys, tiers};
use super::edge::{cors, trusted_proxies};
use super::file::{BreakerFile, ConfigFile, RedisFile, ServerFile, StreamFile, UpstreamFile};
use super::jwt::jwt;
use super::models::{fallbacks, model};
use super::telemetry::telemetry;
use super::{
    BreakerConfig, Config, ConfigError, ConfigSource, FailureRate, LogConfig, LogFormat,
    OnRedisError, RedisConfig, ServerConfig, StreamConfig, UpstreamConfig,
};

/// The longest any duration setting may be: far beyond any sensible timeout, and small enough
/// that adding it to an instant or multiplying it by a retry count cannot overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a response's backend is remembered.
const MAX_AFFINITY_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The longest pause between two attempts.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

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
    let jwt = file.auth.jwt.map(|j| jwt(j, &tiers)).transpose()?;
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
        telemetry: telemetry(file.telemetry)?,
        jwt,
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
        shutdown_grace: at_most(file.shutdown_grace, MAX_DURATION, "server.shutdown_grace")?,
        trusted_proxies: trusted_proxies(&file.trusted_proxies)?,
        cors: file.cors.map(cors).transpose()?,
    })
}

fn redis(file: RedisFile) -> Result<RedisConfig, ConfigError> {
    let url = match (file.url, file.url_env) {
        (Some(url), None) => url,
        (None, Some(var)) => std::env::var(&var).map_err(|_| {
            ConfigError::invalid(
                "redis.url_env",
                format!("environment variable `{var}` is not set"),
            )
        })?,
        _ => {
            return Err(ConfigError::invalid(
                "redis.url",
                "give exactly one of `url` and `url_env`",
            ));
        }
    };
    if fred::types::config::Config::from_url(&url).is_err() {
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
        url,
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
        retry_backoff: at_most(
            file.retry_backoff,
            MAX_RETRY_BACKOFF,
            "upstream.retry_backoff",
        )?,
        max_retry_after: positive(file.max_retry_after, "upstream.max_retry_after")?,
        pool_idle_timeout: positive(file.pool_idle_timeout, "upstream.pool_idle_timeout")?,
        response_affinity_ttl: match file.response_affinity_ttl {
            ttl if ttl < Duration::from_secs(1) => {
                return Err(ConfigError::invalid(
                    "upstream.response_affinity_ttl",
                    "must be at least 1s",
                ));
            }
            ttl => at_most(ttl, MAX_AFFINITY_TTL, "upstream.response_affinity_ttl")?,
        },
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
                window: at_most(
                    file.failure_rate_window,
                    MAX_DURATION,
                    "upstream.breaker.failure_rate_window",
                )?,
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
        max_open_for: at_most(
            file.max_open_for,
            MAX_DURATION,
            "upstream.breaker.max_open_for",
        )?,
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

/// A duration in `(0, MAX_DURATION]`.
pub(super) fn positive(value: Duration, path: &str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(path, "must be greater than zero"));
    }
    at_most(value, MAX_DURATION, path)
}

/// A duration no longer than `max`, so the time arithmetic built on it cannot overflow.
pub(super) fn at_most(value: Duration, max: Duration, path: &str) -> Result<Duration, ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(
            path,
            format!("must be at most {}", humantime::format_duration(max)),
        ));
    }
    Ok(value)
}

pub(super) fn non_zero(value: usize, path: &str) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| ConfigError::invalid(path, "must be at least 1"))
}

pub(super) fn unique<'a>(
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
        let rows: Vec<(String, &str)> = vec![
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
                "models: [{name: m, backends: [{name: b, kind: mock, apis: []}]}]".into(),
                "models[0].backends[0].apis: must name at least one API",
            ),
            (
                "models: [{name: m, backends: [{name: b, kind: mock, apis: [chat, chat]}]}]".into(),
                "models[0].backends[0].apis: names an API twice",
            ),
            (
                "models: [{name: m, backends: [{name: b, kind: mock, mock: {dimensions: 0}}]}]"
                    .into(),
                "models[0].backends[0].mock.dimensions: must be from 1",
            ),
            (
                "models: [{name: m, backends: [{name: b, kind: mock, apis: [images]}]}]".into(),
                "models[0].backends[0].apis[0]: unknown variant `images`",
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
            (
                format!(
                    "{model}\ntiers: {{t: {{}}}}\napi_keys: [{{id: 'a{{b}}', sha256: {KEY}, tier: t}}]"
                ),
                "api_keys[0].id: must be 1 to 64 letters",
            ),
            (
                "tiers: {t: {tokens_per_minute: 18446744073709551615}}".into(),
                "tiers.t.tokens_per_minute: must be at most",
            ),
            (
                "tiers: {t: {max_tokens: 4294967296}}".into(),
                "tiers.t.max_tokens: must be at most 2147483647",
            ),
            (
                "tiers: {t: {concurrent_streams: 4000000000}}".into(),
                "tiers.t.concurrent_streams: must be at most",
            ),
            (
                "upstream: {retry_backoff: 1000years}".into(),
                "upstream.retry_backoff: must be at most 1m",
            ),
            (
                "upstream: {total_timeout: 100years}".into(),
                "upstream.total_timeout: must be at most 1day",
            ),
            (
                "server: {shutdown_grace: 2days}".into(),
                "server.shutdown_grace: must be at most",
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
            crate::config::BackendKind::Http { base_url, .. } => {
                assert_eq!(base_url, "http://h:8000/v1/")
            }
            other => panic!("expected an openai backend, got {other:?}"),
        }
    }
}
