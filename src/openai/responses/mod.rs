//! The Responses API (`/v1/responses`): requests checked, the typed event stream and response
//! objects rewritten for the client, and (for backends that serve only chat completions) the
//! translation both ways.

mod events;
mod id;
mod output;
mod request;
pub mod translate;

pub use events::{Created, CreatedSlot, ResponseEvents, Sequence};
pub use id::ResponseId;
pub use output::output_tokens;
pub use request::ResponsesRequest;

use bytes::BytesMut;

use crate::error::GatewayError;
use crate::sse::Event;
use crate::sse::relay::{Rewrite, Step};

/// The rewrite of a Responses stream: passed through from a backend that serves the API
/// itself, or translated from the chunks of one that serves only chat completions.
#[derive(Debug)]
/// Both boxed: they differ in size, and one allocation a stream is nothing beside its events.
pub enum ResponseStream {
    PassThrough(Box<ResponseEvents>),
    Translated(Box<translate::ChatToResponses>),
}

impl Rewrite for ResponseStream {
    type Error = GatewayError;

    fn on_event(&mut self, event: Event, out: &mut BytesMut) -> Result<Step, GatewayError> {
        match self {
            Self::PassThrough(events) => events.on_event(event, out),
            Self::Translated(chunks) => chunks.on_event(event, out),
        }
    }
}
