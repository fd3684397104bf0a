//! Authentication: request headers -> [`Principal`], the caller every later stage acts for.

mod api_key;

use std::sync::Arc;

use http::HeaderMap;

pub use api_key::{KeyIndex, hash_key};

use crate::config::{Limits, ModelAccess, OutputCaps};
use crate::error::GatewayError;

/// Who is calling: the key's id (safe to log), its tier and the models it may use.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Arc<str>,
    pub tier: Arc<str>,
    pub models: Arc<ModelAccess>,
    pub limits: Limits,
    pub output: OutputCaps,
}

impl Principal {
    /// Checks that this caller may use `model`.
    pub fn authorize(&self, model: &str) -> Result<(), GatewayError> {
        if self.models.allows(model) {
            return Ok(());
        }
        Err(GatewayError::ModelNotAllowed {
            model: model.to_owned(),
        })
    }
}

/// Authenticates a request by its `Authorization: Bearer <key>` header.
pub fn authenticate(headers: &HeaderMap, keys: &KeyIndex) -> Result<Principal, GatewayError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(GatewayError::MissingApiKey)?;
    let token = bearer_token(value.as_bytes()).ok_or(GatewayError::MissingApiKey)?;
    keys.find(token).ok_or(GatewayError::InvalidApiKey)
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_trimmed() {
        let rows: [(&[u8], Option<&[u8]>); 6] = [
            (b"Bearer sk-1", Some(b"sk-1")),
            (b"bearer  sk-1 ", Some(b"sk-1")),
            (b"BEARER sk-1", Some(b"sk-1")),
            (b"Bearer ", None),
            (b"Basic dXNlcg==", None),
            (b"sk-1", None),
        ];
        for (header, token) in rows {
            assert_eq!(
                bearer_token(header),
                token,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
    }
}
