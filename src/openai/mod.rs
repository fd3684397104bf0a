//! The OpenAI wire format: requests, responses, stream chunks and error bodies.
//! Invariant: `openai/` does no I/O; it turns bytes into checked values and back.

pub mod anthropic;
pub mod chunk;
pub mod completions;
pub mod embeddings;
pub mod error_body;
mod fields;
pub mod generation;
pub mod meter;
pub mod request;
pub mod response;
pub mod responses;
pub mod sanitize;
mod texts;
pub mod tokens;
pub mod usage;
pub mod view;

pub use request::ChatRequest;
pub use usage::{Metering, Reservation, Usage};
