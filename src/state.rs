//! `AppState`: the immutable, `Arc`-shared runtime every request reads.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::affinity::Affinity;
use crate::auth::store::AuthStore;
use crate::auth::{Authenticator, JwtSetupError};
use crate::config::{Config, ServerConfig, StreamConfig, UpstreamConfig};
use crate::limits::{Limiter, LocalLimiter, RedisLimiter};
use crate::server::admission::Admission;
use crate::server::shutdown::Drain;
use crate::settle::StallWatch;
use crate::telemetry::traces::{ExporterError, Tracing};
use crate::telemetry::usage::UsageLedger;
use crate::telemetry::usage::redis::RedisUsage;
use crate::upstream::pool::ModelTable;

#[derive(Debug)]
pub struct AppState {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub stream: StreamConfig,
    pub auth: Authenticator,
    pub models: ModelTable,
    pub admission: Admission,
    pub limiter: Arc<Limiter>,
    /// Which backend stored each response.
    pub affinity: Affinity,
    pub drain: Drain,
    /// Streams in flight, swept for clients that stopped reading.
    pub stalls: StallWatch,
    /// Per-key usage totals per day.
    pub usage: Arc<UsageLedger>,
    /// Span export, when `telemetry.otlp_endpoint` is set.
    pub tracing: Option<Tracing>,
    /// Metrics are recorded and served (`telemetry.metrics`).
    pub metrics: bool,
    /// `/metrics` is served on this address instead of the main listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The models' tokenizers are loaded (`/readyz` waits for it).
    pub tokenizers_warm: AtomicBool,
    /// Unix seconds at start; the `created` of every listed model.
    pub started_unix: u64,
}

/// Why the runtime could not be built from a valid configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot set up TLS to a backend: {0}")]
    Tls(#[from] crate::upstream::tls::TlsSetupError),
    #[error("cannot build the Redis client: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Traces(#[from] ExporterError),
    #[error(transparent)]
    Jwt(#[from] JwtSetupError),
}

impl AppState {
    pub fn build(config: &Config) -> Result<Arc<Self>, BuildError> {
        let limiter = Arc::new(limiter(config)?);
        let store = match (limiter.redis(), &config.redis) {
            (Some((pool, prefix)), Some(redis)) => {
                Some(AuthStore::new(pool.clone(), prefix, redis.on_error))
            }
            _ => None,
        };
        let retention = config.telemetry.usage_retention;
        let usage = match limiter.redis() {
            Some((pool, prefix)) => {
                UsageLedger::shared(RedisUsage::new(pool.clone(), prefix), retention)
            }
            None => UsageLedger::local(retention),
        };
        let affinity = Affinity::new(
            limiter
                .redis()
                .zip(config.redis.as_ref())
                .map(|((pool, prefix), redis)| (pool, prefix, redis.timeout)),
            config.upstream.response_affinity_ttl,
        );
        Ok(Arc::new(Self {
            server: config.server.clone(),
            upstream: config.upstream.clone(),
            stream: config.stream.clone(),
            auth: Authenticator::new(config, store)?,
            models: ModelTable::new(&config.models, &config.upstream)?,
            admission: Admission::new(config.server.max_concurrent_requests.get()),
            limiter,
            affinity,
            usage: Arc::new(usage),
            drain: Drain::default(),
            stalls: StallWatch::new(config.stream.client_stall_timeout),
            tracing: config
                .telemetry
                .traces
                .as_ref()
                .map(Tracing::start)
                .transpose()?,
            metrics: config.telemetry.metrics,
            metrics_listen: config.telemetry.metrics_listen,
            tokenizers_warm: AtomicBool::new(false),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }))
    }
}

/// How long a stream lease lives if its request is never settled (a crashed replica): longer
/// than any request may run (the relay enforces `total_timeout`) plus settlement's own bound.
fn lease_ttl(upstream: &UpstreamConfig) -> std::time::Duration {
    upstream.total_timeout + std::time::Duration::from_secs(5)
}

/// The shared limiter with `redis.url`, the in-process one without.
fn limiter(config: &Config) -> Result<Limiter, BuildError> {
    let ttl = lease_ttl(&config.upstream);
    Ok(match &config.redis {
        Some(redis) => Limiter::Shared(Box::new(RedisLimiter::new(redis, ttl)?)),
        None => Limiter::Local(LocalLimiter::new(ttl)),
    })
}
