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

/// The Responses API's `error` stream event, with the `error` object beside its own fields
/// (the OpenAI SDKs raise on that).
#[derive(Debug, Serialize)]
pub struct ErrorEvent<'a> {
    pub r#type: &'static str,
    pub code: Option<&'a str>,
    pub message: &'a str,
    pub param: Option<&'a str>,
    pub sequence_number: u64,
    pub error: ErrorDetail<'a>,
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
    Object {
        message: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
    Text(String),
}

impl UpstreamErrorDetail {
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::Object { message, .. } => message.as_deref(),
            Self::Text(text) => Some(text),
        }
    }

    /// Whether the error says the request was at fault: a 4xx `code` (a number or a numeric
    /// string), or a `type` naming a bad request, as vLLM reports errors inside a stream.
    pub fn blames_the_request(&self) -> bool {
        let Self::Object { code, kind, .. } = self else {
            return false;
        };
        let status = match code {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        status.is_some_and(|s| (400..500).contains(&s))
            || kind
                .as_deref()
                .is_some_and(|k| matches!(k, "BadRequestError" | "invalid_request_error"))
    }
}
