//! Authentication: request headers -> [`Principal`], the caller every later stage acts for.
//! A bearer value that is a compact JWS is verified as a JWT (when `auth.jwt` is configured);
//! anything else is an API key.
//!
//! Invariant: `auth/` returns a `Principal` or a `GatewayError`, nothing else, and no error
//! quotes what the client sent.

mod api_key;
mod jwt;

use std::sync::Arc;

use http::HeaderMap;

pub use api_key::{KeyIndex, hash_key};
pub use jwt::{JwtSetupError, JwtVerifier, TokenRefusal, VerifiedToken, looks_like_jwt, unix_now};

use crate::config::{Config, Limits, ModelAccess, OutputCaps};
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

/// Everything a bearer credential is checked against.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyIndex,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn new(config: &Config) -> Result<Self, JwtSetupError> {
        Ok(Self {
            keys: KeyIndex::new(&config.api_keys),
            jwt: config
                .jwt
                .as_ref()
                .map(|jwt| JwtVerifier::new(jwt, &config.tiers))
                .transpose()?,
        })
    }

    /// Authenticates a request by its `Authorization: Bearer <key or JWT>` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(GatewayError::MissingApiKey)?;
        let token = bearer_token(value.as_bytes()).ok_or(GatewayError::MissingApiKey)?;
        if !looks_like_jwt(token) {
            return self.keys.find(token).ok_or(GatewayError::InvalidApiKey);
        }
        let jwt = self.jwt.as_ref().ok_or(GatewayError::InvalidApiKey)?;
        jwt.verify(token, unix_now())
            .map(|verified| verified.principal)
            .map_err(GatewayError::InvalidToken)
    }

    /// Periodic upkeep: the JWKS file is re-read when it changed.
    pub fn upkeep(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.reload_if_changed();
        }
    }
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
