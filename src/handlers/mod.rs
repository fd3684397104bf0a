//! Request handlers: each reads top to bottom as the list of stages it runs.

pub mod chat;
pub mod embeddings;
mod json;
pub mod models;
mod pipeline;
pub mod probes;
mod request_body;
pub mod responses;
pub mod usage;
