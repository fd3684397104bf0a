//! The `telemetry` section: where metrics are served, where traces go, how long usage is kept.

use std::net::SocketAddr;
use std::time::Duration;

use super::ConfigError;
use super::file::TelemetryFile;
use super::validate::{at_most, non_zero, positive};

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Metrics are recorded and `/metrics` served; off, no recorder is installed at all.
    pub metrics: bool,
    /// When set, `/metrics` and `/usage` are served here (and nothing else), and not on the main
    /// listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Spans are exported only when an OTLP endpoint is configured.
    pub traces: Option<TracesConfig>,
    /// How long each day's per-key usage totals are kept (the Redis TTL; in-process totals are
    /// pruned after it too).
    pub usage_retention: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            metrics_listen: None,
            traces: None,
            usage_retention: TelemetryFile::default().usage_retention,
        }
    }
}

/// OTLP/HTTP span export.
#[derive(Debug, Clone)]
pub struct TracesConfig {
    /// The full traces URL (`/v1/traces` appended to a bare collector address).
    pub endpoint: String,
    pub export_timeout: Duration,
    /// Of the traces that start here, the share recorded; a caller's sampled flag is followed.
    pub sample_ratio: f64,
    /// Finished spans waiting for export; beyond it they are dropped and counted.
    pub queue_size: usize,
}

const MAX_USAGE_RETENTION: Duration = Duration::from_secs(3660 * 24 * 60 * 60);
const MAX_QUEUE_SIZE: usize = 1 << 20;

pub(super) fn telemetry(file: TelemetryFile) -> Result<TelemetryConfig, ConfigError> {
    let metrics_listen = file
        .metrics_listen
        .map(|addr| {
            addr.parse().map_err(|_| {
                ConfigError::invalid(
                    "telemetry.metrics_listen",
                    "must be an address such as 0.0.0.0:9090",
                )
            })
        })
        .transpose()?;
    let usage_retention = file.usage_retention;
    if usage_retention < Duration::from_secs(24 * 60 * 60) || usage_retention > MAX_USAGE_RETENTION
    {
        return Err(ConfigError::invalid(
            "telemetry.usage_retention",
            "must be between 1 day and 10 years",
        ));
    }
    let traces = match file.otlp_endpoint {
        Some(endpoint) => Some(TracesConfig {
            endpoint: traces_url(&endpoint)?,
            export_timeout: at_most(
                positive(file.otlp_timeout, "telemetry.otlp_timeout")?,
                Duration::from_secs(60),
                "telemetry.otlp_timeout",
            )?,
            sample_ratio: ratio(file.trace_sample_ratio)?,
            queue_size: queue_size(file.trace_queue_size)?,
        }),
        None => None,
    };
    Ok(TelemetryConfig {
        metrics: file.metrics,
        metrics_listen,
        traces,
        usage_retention,
    })
}

/// An `http(s)://` collector address; a bare one gets the OTLP traces path.
fn traces_url(endpoint: &str) -> Result<String, ConfigError> {
    let invalid = || {
        ConfigError::invalid(
            "telemetry.otlp_endpoint",
            "must be an http:// or https:// URL such as http://otel-collector:4318",
        )
    };
    let url = reqwest::Url::parse(endpoint).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(if url.path() == "/" {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    })
}

fn queue_size(value: usize) -> Result<usize, ConfigError> {
    let size = non_zero(value, "telemetry.trace_queue_size")?.get();
    if size > MAX_QUEUE_SIZE {
        return Err(ConfigError::invalid(
            "telemetry.trace_queue_size",
            format!("must be at most {MAX_QUEUE_SIZE}"),
        ));
    }
    Ok(size)
}

fn ratio(value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            "telemetry.trace_sample_ratio",
            "must be between 0 and 1",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_collector_address_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://collector:4318").ok().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://c.example/otlp/v1/traces")
                .ok()
                .as_deref(),
            Some("https://c.example/otlp/v1/traces")
        );
        assert!(traces_url("grpc://collector:4317").is_err());
        assert!(traces_url("collector:4318").is_err());
    }
}
