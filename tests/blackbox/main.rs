//! Black-box tests: the real gateway on 127.0.0.1:0 (in-process, or the real binary where the
//! process is the behaviour), scripted upstreams, assertions on what a client sees.

mod support;

mod admission;
mod anthropic;
mod auth;
mod azure;
mod backend_kinds;
mod backpressure;
mod bad_requests;
mod breaker_outcomes;
mod chat;
mod cli;
mod completions;
mod deploy_files;
mod edge;
mod embeddings;
mod hostile_upstream;
mod jwt;
mod limits;
mod limits_integrity;
mod metrics;
mod redis_cluster;
mod responses;
mod routing;
mod runtime_keys;
mod sdk;
mod secrets;
mod shared_limits;
mod shutdown;
mod tls;
mod traces;
mod upstream_connections;
mod upstream_failures;
mod usage;
