//! Server-Sent Events: an incremental decoder, an encoder, and the pull-based relay that joins
//! them. Invariant: `sse/` knows nothing about OpenAI; what to do with each event is the
//! caller's [`relay::Rewrite`].

pub mod decoder;
pub mod encoder;
pub mod relay;

pub use decoder::{DecodeError, Decoder, Event};
