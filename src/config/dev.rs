//! The built-in development configuration: used when no config file is given, so a fresh
//! checkout serves a streamed answer from the mock model with no model server and no Redis.

use super::{Config, ConfigError, parse};

/// The documented development key. It is only accepted by the development configuration.
pub const DEV_API_KEY: &str = "sk-sluicegate-dev";

/// The development configuration as YAML; `sluicegate check-config` accepts the same text.
const DEV_YAML: &str = r#"
server:
  listen: 127.0.0.1:8080
log:
  format: text
tiers:
  free: { requests_per_minute: 60, tokens_per_minute: 40000, concurrent_streams: 2 }
  pro: { requests_per_minute: 600, tokens_per_minute: 400000, concurrent_streams: 16 }
  enterprise: { requests_per_minute: 6000, tokens_per_minute: 4000000, concurrent_streams: 128 }
api_keys:
  - id: dev
    # sha256 of "sk-sluicegate-dev"
    sha256: 222696be5f0eb9df0fa77b77d6efc39c946df7ab9ea61fb201d35832c5e9b15c
    tier: pro
    models: ["*"]
models:
  - name: mock-gpt
    backends:
      - name: mock
        kind: mock
        mock: { tokens: 16, pace: 20ms }
        apis: [chat, responses, embeddings, completions]
"#;

/// Builds the development configuration.
pub fn development() -> Result<Config, ConfigError> {
    parse(DEV_YAML)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn development_config_is_valid_and_accepts_the_documented_key() {
        let config = super::development().expect("development config is valid");
        let digest: [u8; 32] = Sha256::digest(super::DEV_API_KEY.as_bytes()).into();
        assert_eq!(
            config.api_keys[0].sha256, digest,
            "the documented key matches its digest"
        );
        assert_eq!(config.models[0].name, "mock-gpt");
    }
}
