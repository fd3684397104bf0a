//! Logging: one subscriber, JSON or text, filtered by `log.level` (or `RUST_LOG` when set).
//! Every request writes one access-log line (target `sluicegate::access`) when it settles.

mod handles;
pub mod metrics;
pub mod traces;
pub mod usage;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Fails if one is already installed.
pub fn init(config: &LogConfig) -> Result<(), tracing_subscriber::util::TryInitError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        // Colour only on a terminal: files and pipes get plain text.
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init(),
    }
}
