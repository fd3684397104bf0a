//! Configuration: the validated runtime types, and [`load`] used by `serve` and `check-config`.
//!
//! Invariant: `config/` does not import `http`; it produces plain typed values whose
//! invariants (non-zero limits, parsed addresses, resolved secrets) hold by construction.

mod access;
mod dev;
mod edge;
mod file;
mod jwt;
mod models;
mod telemetry;
mod tls;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use tiktoken_rs::tokenizer::Tokenizer;

pub use access::{KEY_ID_RULE, is_plain_key_id, limits_over};
pub use dev::{DEV_API_KEY, development};
pub use edge::CorsConfig;
pub use file::LimitsFile as LimitOverrides;
pub use jwt::{JwtConfig, MAX_JWKS_BYTES, SecretBytes, read_jwks};
pub use telemetry::{TelemetryConfig, TracesConfig};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub api_keys: Vec<ApiKey>,
    pub tiers: BTreeMap<String, Tier>,
    pub models: Vec<Model>,
    pub upstream: UpstreamConfig,
    pub stream: StreamConfig,
    pub redis: Option<RedisConfig>,
    pub telemetry: TelemetryConfig,
    /// JWTs accepted beside the API keys, when configured.
    pub jwt: Option<JwtConfig>,
    pub source: ConfigSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// The built-in development configuration (mock model, documented key).
    Development,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None`: one worker per core.
    pub worker_threads: Option<NonZeroUsize>,
    pub max_concurrent_requests: NonZeroUsize,
    pub max_body_bytes: NonZeroUsize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// Bounds how long a client may take to send its whole body.
    pub body_read_timeout: Duration,
    pub keep_alive: bool,
    pub shutdown_grace: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub cors: Option<CorsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// One API key: only its SHA-256 digest is ever held.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub tier: String,
    pub models: ModelAccess,
    /// The tier's limits with this key's overrides applied.
    pub limits: Limits,
    pub output: OutputCaps,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAccess {
    All,
    Only(BTreeSet<String>),
}

impl ModelAccess {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names.contains(model),
        }
    }
}

/// A tier: its limits and output caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tier {
    pub limits: Limits,
    pub output: OutputCaps,
}

/// Rate limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU64>,
    pub concurrent_streams: Option<NonZeroU32>,
}

/// How many output tokens a request may generate (and so reserves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCaps {
    /// Used when a request sets neither `max_tokens` nor `max_completion_tokens`.
    pub default: NonZeroU64,
    /// The most a request may ask for; larger asks are lowered to it. Always set, so every
    /// reservation is bounded.
    pub max: NonZeroU64,
}

impl Default for OutputCaps {
    fn default() -> Self {
        Self {
            default: NonZeroU64::new(DEFAULT_MAX_TOKENS).expect("invariant: non-zero constant"),
            max: NonZeroU64::new(DEFAULT_OUTPUT_CEILING).expect("invariant: non-zero constant"),
        }
    }
}

/// The output cap of a tier that sets no `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The largest output cap of a tier that sets no `max_tokens`: above what current models
/// generate in one answer, and a bound on what one request can reserve.
pub const DEFAULT_OUTPUT_CEILING: u64 = 131_072;
/// The largest token count any setting or request may name (OpenAI's own bound on
/// `max_tokens`); it keeps every reservation far inside `i64`.
pub const MAX_TOKENS_BOUND: u64 = (1 << 31) - 1;
/// The largest tokens-per-minute limit: token buckets are exact up to 2^53 (they are f64s in
/// Rust and in Redis' Lua), and this leaves room for a request's cost on top.
pub const MAX_TOKENS_PER_MINUTE: u64 = 1 << 50;
/// The largest concurrent-streams limit.
pub const MAX_CONCURRENT_STREAMS: u32 = 1_000_000;

impl OutputCaps {
    /// The cap for a request that asked for `requested` (the larger of its two fields).
    pub fn effective(&self, requested: Option<u64>) -> u64 {
        requested.unwrap_or(self.default.get()).min(self.max.get())
    }
}

/// A client-facing model name and the backends that serve it.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub backends: Vec<BackendConfig>,
    /// Other models, by name, tried in order when this one cannot answer.
    pub fallbacks: Vec<String>,
    /// When set, a request not answered by then also goes to a second backend; the first
    /// answer wins and the other call is cancelled (its connection closed).
    pub hedge_after: Option<Duration>,
    /// Counts tokens when a backend reports no usage.
    pub tokenizer: Tokenizer,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    /// The model name sent upstream; the client-facing name is restored on the way back.
    pub upstream_model: String,
    pub kind: BackendKind,
    pub weight: NonZeroU32,
    pub max_inflight: Option<NonZeroUsize>,
    /// The OpenAI APIs it serves (`apis`, default chat completions only).
    pub apis: Apis,
}

/// An OpenAI API a backend may serve, by the path it answers under the base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `chat/completions`
    Chat,
    /// `responses`
    Responses,
    /// `embeddings`
    Embeddings,
    /// `completions` (the legacy text completions)
    Completions,
}

impl Api {
    /// The path under a backend's base URL (and under the gateway's `/v1/`).
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Responses => "responses",
            Self::Embeddings => "embeddings",
            Self::Completions => "completions",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Api`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Apis(u8);

impl Apis {
    /// Chat completions only: what a backend serves unless told otherwise.
    pub const CHAT: Self = Self(1);
    /// Every API (the in-process mock's, in the embedded default).
    pub const ALL: Self = Self(0b1111);

    pub fn contains(self, api: Api) -> bool {
        self.0 & api.bit() != 0
    }

    /// The set of `apis`; `None` when an API is listed twice.
    pub fn of(apis: &[Api]) -> Option<Self> {
        apis.iter().try_fold(Self(0), |set, api| {
            (!set.contains(*api)).then_some(Self(set.0 | api.bit()))
        })
    }
}

#[derive(Debug, Clone)]
pub enum BackendKind {
    /// A model server reached over HTTP(S), speaking `dialect`.
    Http {
        dialect: Dialect,
        /// Absolute http(s) URL ending in `/`, so joining `chat/completions` keeps its path.
        base_url: String,
        api_key: Option<Secret>,
        /// TLS settings of an `https://` backend (the system's roots when absent).
        tls: Option<TlsConfig>,
    },
    Mock(MockConfig),
}

/// The API flavour a backend speaks: its paths, how it takes its key, and its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's (vLLM, llama.cpp, LiteLLM, OpenAI itself): `Authorization: Bearer`.
    OpenAi,
    /// Azure OpenAI: `openai/deployments/{deployment}/{api}?api-version={api_version}` under
    /// the resource endpoint, the key in `api-key`; OpenAI's wire format.
    Azure {
        deployment: String,
        api_version: String,
    },
    /// Anthropic's Messages API (`messages`, `x-api-key`, `anthropic-version`), translated to
    /// and from chat completions.
    Anthropic,
}

/// A backend's TLS settings, read and parsed from their PEM files at start.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Trusted instead of the system's roots.
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// Presented to a backend that asks for a client certificate.
    pub client: Option<ClientIdentity>,
    /// The name the backend's certificate must carry (the base URL's host when absent).
    pub server_name: Option<String>,
}

/// A client certificate chain and its key; `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: std::sync::Arc<rustls::pki_types::PrivateKeyDer<'static>>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The scripted answer of the in-process mock backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockConfig {
    pub tokens: u32,
    pub pace: Duration,
    pub first_token_delay: Duration,
    /// The size of its embeddings when a request does not ask for one.
    pub dimensions: u32,
}

/// A secret read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    pub max_attempts: NonZeroU32,
    pub retry_backoff: Duration,
    /// The longest an upstream's `retry-after` may cool a backend down.
    pub max_retry_after: Duration,
    /// How long an idle keep-alive connection to a backend is kept.
    pub pool_idle_timeout: Duration,
    /// How long the backend that stored a response is remembered.
    pub response_affinity_ttl: Duration,
    pub breaker: BreakerConfig,
}

/// The circuit-breaker policy of every backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: NonZeroU32,
    /// At least one second (the breaker library's minimum).
    pub open_for: Duration,
    pub max_open_for: Duration,
    pub failure_rate: Option<FailureRate>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Open when more than this share of calls failed (0 < threshold < 1).
    pub threshold: f64,
    /// Whole seconds (the breaker library's resolution).
    pub window: Duration,
    pub min_requests: u32,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub heartbeat_interval: Duration,
    pub client_stall_timeout: Duration,
    pub max_event_bytes: usize,
}

#[derive(Clone)]
pub struct RedisConfig {
    /// May carry a password (`redis://:password@host`); never printed.
    pub url: String,
    pub timeout: Duration,
    pub on_error: OnRedisError,
    pub pool_size: NonZeroUsize,
    pub key_prefix: String,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &without_credentials(&self.url))
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// `scheme://user:password@host/...` with the user information replaced.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}[redacted]{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// What admission does while Redis is unreachable or its breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Enforce the same limits in this process (per replica, not shared).
    Local,
    /// Admit without limits.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// A configuration problem, naming the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigError {
    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Reads and validates a YAML configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut config = parse(&text)?;
    config.source = ConfigSource::File(path.to_owned());
    Ok(config)
}

/// Parses and validates YAML text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    let file: file::ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::invalid(
            if path == "." || path == "?" {
                "(file)"
            } else {
                &path
            },
            without_location(&e.inner().to_string()),
        )
    })?;
    validate::validate(file)
}

/// serde_norway prefixes some messages with its own `a.b: ` location; the path is already given.
fn without_location(message: &str) -> String {
    match message.split_once(": ") {
        Some((location, rest)) if !location.contains(' ') => rest.to_owned(),
        _ => message.to_owned(),
    }
}
