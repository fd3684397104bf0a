//! `ResponseId`: a response id as it may appear in a path or a Redis key.

use std::fmt;
use std::sync::Arc;

use crate::error::GatewayError;

/// The longest response id accepted (OpenAI's are about 50 characters).
const MAX_ID_BYTES: usize = 128;

/// A response id: 1 to 128 ASCII letters, digits, `_` or `-`, so it can be written into an
/// upstream path or a Redis key as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseId(Arc<str>);

impl ResponseId {
    /// The id, when `raw` is one; `None` for anything else (which no backend could have made).
    pub fn parse(raw: &str) -> Option<Self> {
        let fits = !raw.is_empty()
            && raw.len() <= MAX_ID_BYTES
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        fits.then(|| Self(raw.into()))
    }

    /// The id of a request field `param`: a 400 naming it when it is not one.
    pub fn of_param(raw: &str, param: &str) -> Result<Self, GatewayError> {
        Self::parse(raw).ok_or_else(|| {
            GatewayError::invalid(
                param,
                "invalid_value",
                format!("'{param}' is not a valid response id"),
            )
        })
    }

    /// The `id` of a JSON object (a `response`), when it is one. Read apart from the chunk
    /// view, which every chat chunk goes through and which has no use for ids.
    pub fn of_object(json: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Identified<'a> {
            #[serde(borrow)]
            id: Option<std::borrow::Cow<'a, str>>,
        }
        let object: Identified<'_> = serde_json::from_slice(json).ok()?;
        Self::parse(&object.id?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResponseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_path_safe_ids_parse() {
        assert!(ResponseId::parse("resp_68af0c1f-ab").is_some());
        for bad in [
            "",
            "resp/../x",
            "resp x",
            "resp%2F",
            "résp",
            &"a".repeat(129),
        ] {
            assert!(ResponseId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
