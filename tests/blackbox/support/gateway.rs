//! `TestGateway`: `Gateway::serve` on 127.0.0.1:0 in-process, configured from YAML.

use std::net::SocketAddr;

use sluicegate::Gateway;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{KEY, OTHER_KEY};

/// A test configuration: one model `test-model` served by `backend` YAML, two keys
/// (`KEY` may use every model, `OTHER_KEY` only `other-model`), and overridable sections.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub backend: String,
    pub server: String,
    pub upstream: String,
    pub stream: String,
    /// The limits of the `basic` tier both keys are on.
    pub tier: String,
    /// The `redis` section, when limits are shared.
    pub redis: Option<String>,
    /// Backends of `other-model` when they differ from `test-model`'s; it is then also
    /// `test-model`'s fallback.
    pub fallback_backend: Option<String>,
    /// `test-model`'s `hedge_after`.
    pub hedge_after: Option<String>,
    /// The `telemetry` section.
    pub telemetry: String,
}

impl GatewayConfig {
    /// `test-model` served by an OpenAI-compatible upstream at `base_url`.
    pub fn openai(base_url: &str) -> Self {
        Self::with_backend(format!(
            "{{name: up, kind: openai, base_url: '{base_url}', upstream_model: upstream-model}}"
        ))
    }

    /// `test-model` served by several OpenAI-compatible upstreams, named `b0`, `b1`, ...
    pub fn openai_pool(base_urls: &[String]) -> Self {
        let backends: Vec<String> = base_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("{{name: b{i}, kind: openai, base_url: '{url}', upstream_model: upstream-model}}"))
            .collect();
        Self::with_backend(backends.join(", "))
    }

    /// Weights `b0` so heavily that it is all but certainly the first choice.
    pub fn favour_first_backend(mut self) -> Self {
        self.backend = self
            .backend
            .replacen("upstream-model}", "upstream-model, weight: 1000}", 1);
        self
    }

    /// Makes `other-model`, served by `base_url`, the fallback of `test-model`.
    pub fn fallback_to(mut self, base_url: &str) -> Self {
        self.fallback_backend = Some(format!(
            "{{name: fallback, kind: openai, base_url: '{base_url}', upstream_model: upstream-model}}"
        ));
        self
    }

    pub fn hedge_after(mut self, after: &str) -> Self {
        self.hedge_after = Some(after.into());
        self
    }

    /// `test-model` served by the in-process mock backend.
    pub fn mock(tokens: u32, pace: &str) -> Self {
        Self::with_backend(format!(
            "{{name: mock, kind: mock, mock: {{tokens: {tokens}, pace: {pace}}}}}"
        ))
    }

    /// `test-model` served by the backends in `backend` (YAML flow list items).
    pub fn with_backend(backend: String) -> Self {
        Self {
            backend,
            server: "{}".into(),
            upstream: "{first_byte_timeout: 5s, idle_timeout: 5s, total_timeout: 30s}".into(),
            stream: "{heartbeat_interval: 10s}".into(),
            tier: "{}".into(),
            redis: None,
            fallback_backend: None,
            hedge_after: None,
            telemetry: "{}".into(),
        }
    }

    pub fn server(mut self, yaml: &str) -> Self {
        self.server = yaml.into();
        self
    }

    pub fn upstream(mut self, yaml: &str) -> Self {
        self.upstream = yaml.into();
        self
    }

    pub fn stream(mut self, yaml: &str) -> Self {
        self.stream = yaml.into();
        self
    }

    pub fn telemetry(mut self, yaml: &str) -> Self {
        self.telemetry = yaml.into();
        self
    }

    pub fn tier(mut self, yaml: &str) -> Self {
        self.tier = yaml.into();
        self
    }

    /// Shares limits through the Redis at `url` (50 ms timeout, in-process fallback).
    pub fn redis(mut self, url: &str) -> Self {
        self.redis = Some(format!("{{url: '{url}', timeout: 50ms, on_error: local}}"));
        self
    }

    pub fn yaml(&self) -> String {
        format!(
            "server: {server}\nlog: {{format: json, level: warn}}\nupstream: {upstream}\nstream: {stream}\ntelemetry: {telemetry}\n\
             tiers: {{basic: {tier}}}\n\
             models:\n  - {{name: test-model, backends: [{backend}], fallbacks: [{fallbacks}]{hedge}}}\n  - {{name: other-model, backends: [{other}]}}\n\
             api_keys:\n  - {{id: full, sha256: {full}, tier: basic}}\n  - {{id: limited, sha256: {limited}, tier: basic, models: [other-model]}}\n",
            server = self.server,
            upstream = self.upstream,
            stream = self.stream,
            telemetry = self.telemetry,
            backend = self.backend,
            fallbacks = if self.fallback_backend.is_some() {
                "other-model"
            } else {
                ""
            },
            other = self.fallback_backend.as_deref().unwrap_or(&self.backend),
            hedge = self
                .hedge_after
                .as_ref()
                .map(|h| format!(", hedge_after: {h}"))
                .unwrap_or_default(),
            tier = self.tier,
            full = sluicegate::auth::hash_key(KEY),
            limited = sluicegate::auth::hash_key(OTHER_KEY),
        ) + &self
            .redis
            .as_ref()
            .map(|r| format!("redis: {r}\n"))
            .unwrap_or_default()
    }
}

/// A gateway serving on a free loopback port; shut down (without grace) when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn start(config: &GatewayConfig) -> Self {
        let config = sluicegate::config::parse(&config.yaml()).expect("test config is valid");
        let gateway = Gateway::build(&config).expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        #[expect(
            clippy::disallowed_methods,
            reason = "the gateway runs for the whole test"
        )]
        let task = tokio::spawn(gateway.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts draining, as a stop signal would, and returns the serve task to await.
    pub fn begin_shutdown(&mut self) -> JoinHandle<std::io::Result<()>> {
        let _ = self.stop.take().expect("shutdown starts once").send(());
        self.task.take().expect("serve task is running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
