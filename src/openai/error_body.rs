//! The `{"error":{"message","type","param","code"}}` wire shape (serde only, no logic).

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    #[serde(borrow)]
    pub error: ErrorDetail<'a>,
}

/// One error; `param` and `code` are always present, `null` when absent, as OpenAI sends them.
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    pub r#type: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

/// What the gateway reads from an upstream's error body: only the message, and only to be
/// sanitised before a client sees it.
#[derive(Debug, Deserialize)]
pub struct UpstreamErrorBody {
    pub error: UpstreamErrorDetail,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UpstreamErrorDetail {
    Object { message: Option<String> },
    Text(String),
}

impl UpstreamErrorDetail {
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Object { message } => message.as_deref(),
            Self::Text(text) => Some(text),
        }
    }
}
