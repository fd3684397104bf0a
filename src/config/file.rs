//! The serde mirror of the YAML file: unknown keys are errors, durations are strings such as
//! `250ms` or `30s`, and every section has defaults. Turned into [`super::Config`] by `validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub server: ServerFile,
    pub log: LogFile,
    pub api_keys: Vec<ApiKeyFile>,
    pub tiers: BTreeMap<String, TierFile>,
    pub models: Vec<ModelFile>,
    pub upstream: UpstreamFile,
    pub stream: StreamFile,
    pub redis: Option<RedisFile>,
    pub telemetry: TelemetryFile,
    pub auth: AuthFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFile {
    /// Bearer tokens from an identity provider, beside the API keys.
    pub jwt: Option<super::jwt::JwtFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryFile {
    /// Record metrics and serve `/metrics` (the default).
    pub metrics: bool,
    /// Serve `/metrics` and `/usage` on this address instead of the main listener.
    pub metrics_listen: Option<String>,
    /// An OTLP/HTTP collector (`http://host:4318`) or its full traces URL; no traces without it.
    pub otlp_endpoint: Option<String>,
    #[serde(with = "humantime_serde")]
    pub otlp_timeout: Duration,
    pub trace_sample_ratio: f64,
    pub trace_queue_size: usize,
    /// How long daily per-key usage totals are kept in Redis, such as `35d`.
    #[serde(with = "humantime_serde")]
    pub usage_retention: Duration,
}

impl Default for TelemetryFile {
    fn default() -> Self {
        Self {
            metrics: true,
            metrics_listen: None,
            otlp_endpoint: None,
            otlp_timeout: Duration::from_secs(5),
            trace_sample_ratio: 1.0,
            trace_queue_size: 2048,
            usage_retention: Duration::from_secs(35 * 24 * 60 * 60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub listen: String,
    /// Runtime worker threads; 0 means one per core.
    pub worker_threads: usize,
    pub max_concurrent_requests: usize,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    pub keep_alive: bool,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
    /// Browser origins allowed to call the API; none without it.
    pub cors: Option<super::edge::CorsFile>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            worker_threads: 0,
            max_concurrent_requests: 1024,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keep_alive: true,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            cors: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    /// `json` (one object per line) or `text`.
    pub format: String,
    /// A tracing filter such as `info` or `sluicegate=debug`.
    pub level: String,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub id: String,
    /// Hex SHA-256 digest of the key (`sluicegate hash-key KEY` prints it).
    pub sha256: String,
    pub tier: String,
    #[serde(default = "all_models")]
    pub models: Vec<String>,
    /// Limits of this key that differ from its tier's.
    #[serde(default)]
    pub limits: LimitsFile,
}

fn all_models() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierFile {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent_streams: Option<u32>,
    /// Output cap written into a request that sets none.
    pub default_max_tokens: Option<u64>,
    /// The largest output cap a request of this tier may ask for.
    pub max_tokens: Option<u64>,
}

/// Rate limits that override a tier's: in `api_keys[].limits`, and on runtime keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub concurrent_streams: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    pub backends: Vec<BackendFile>,
    /// Models tried in order when every backend of this one failed before the first byte.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Send the request to a second backend too when the first has not answered by then.
    #[serde(default, with = "humantime_serde")]
    pub hedge_after: Option<Duration>,
    /// The encoding tokens are counted with when a backend reports no usage, such as
    /// `o200k_base`; by default the one OpenAI uses for the model's name.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub name: String,
    pub kind: BackendKindFile,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub upstream_model: Option<String>,
    /// Only for `kind: mock`.
    pub mock: Option<MockFile>,
    /// Share of traffic relative to the model's other backends.
    #[serde(default = "one")]
    pub weight: u32,
    /// Requests this backend may have in flight; absent = no cap.
    pub max_inflight: Option<usize>,
    /// The OpenAI APIs it serves; absent = `[chat]`.
    pub apis: Option<Vec<super::Api>>,
    /// TLS settings of an `https://` backend.
    pub tls: Option<TlsFile>,
    /// Only for `kind: azure`: the deployment the model runs as.
    pub deployment: Option<String>,
    /// Only for `kind: azure`: the `api-version` every call names.
    pub api_version: Option<String>,
}

/// Whom an `https://` backend's connections trust, who the gateway is to it, and the name its
/// certificate must carry. All optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM CA certificates: trusted instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain the gateway presents (with `client_key_file`).
    pub client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of that certificate.
    pub client_key_file: Option<std::path::PathBuf>,
    /// The name the backend's certificate must carry, when not the base URL's host.
    pub server_name: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKindFile {
    Openai,
    Azure,
    Anthropic,
    Mock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockFile {
    pub tokens: u32,
    #[serde(with = "humantime_serde")]
    pub pace: Duration,
    #[serde(with = "humantime_serde")]
    pub first_token_delay: Duration,
    pub dimensions: u32,
}

impl Default for MockFile {
    fn default() -> Self {
        Self {
            tokens: 16,
            pace: Duration::from_millis(20),
            first_token_delay: Duration::ZERO,
            dimensions: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
    /// Tries per model before its fallbacks, each on a different backend when one is left.
    pub max_attempts: u32,
    /// First pause between tries; doubled each time, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// The longest an upstream's `retry-after` may cool a backend down.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// How long an idle keep-alive connection to a backend is kept; below the backends' own
    /// idle timeout (uvicorn closes after 5 s), so a pooled connection is rarely dead.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// How long the gateway remembers which backend stored a response (OpenAI keeps stored
    /// responses 30 days).
    #[serde(with = "humantime_serde")]
    pub response_affinity_ttl: Duration,
    pub breaker: BreakerFile,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(600),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
            response_affinity_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            breaker: BreakerFile::default(),
        }
    }
}

/// When a backend's circuit opens, and for how long.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerFile {
    pub consecutive_failures: u32,
    /// First open period (at least 1s); doubles on each reopening up to `max_open_for`.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
    /// Also open when the failure rate over `failure_rate_window` exceeds this (0..1).
    pub failure_rate: Option<f64>,
    #[serde(with = "humantime_serde")]
    pub failure_rate_window: Duration,
    pub failure_rate_min_requests: u32,
}

impl Default for BreakerFile {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(30),
            failure_rate: None,
            failure_rate_window: Duration::from_secs(10),
            failure_rate_min_requests: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamFile {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub client_stall_timeout: Duration,
    pub max_event_bytes: usize,
}

impl Default for StreamFile {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            client_stall_timeout: Duration::from_secs(30),
            max_event_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://`, `rediss://` or `redis-cluster://` URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Instead of `url`: the environment variable holding it (a URL with a password belongs
    /// in a secret, not in the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Bound on every Redis call.
    #[serde(default = "redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What admission does while Redis is unreachable: `local`, `allow` or `deny`.
    #[serde(default = "on_error_local")]
    pub on_error: String,
    #[serde(default = "redis_pool_size")]
    pub pool_size: usize,
    /// Prefix of every key the gateway writes.
    #[serde(default = "key_prefix")]
    pub key_prefix: String,
}

fn redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn on_error_local() -> String {
    "local".into()
}

fn redis_pool_size() -> usize {
    4
}

fn key_prefix() -> String {
    "sluicegate".into()
}
