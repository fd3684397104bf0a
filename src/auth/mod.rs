//! Authentication: request headers -> [`Principal`], the caller every later stage acts for.
//! A bearer value that is a compact JWS is verified as a JWT (when `auth.jwt` is configured);
//! anything else is an API key.
//!
//! Invariant: `auth/` returns a `Principal` or a `GatewayError`, nothing else, and no error
//! quotes what the client sent.

pub mod admin;
mod api_key;
mod jwt;
pub mod key_format;
pub mod store;

use std::sync::Arc;

use http::HeaderMap;

pub use api_key::{KeyIndex, digest, hash_key};
pub use jwt::{JwtSetupError, JwtVerifier, TokenRefusal, VerifiedToken, looks_like_jwt, unix_now};

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, Limits, ModelAccess, OutputCaps, Tier, limits_over};
use crate::error::GatewayError;
use store::{AuthStore, KeyRecord, Standing};

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

/// Everything a bearer credential is checked against: the configured keys, the JWT
/// settings, and (with Redis) the runtime keys and revocations.
#[derive(Debug)]
pub struct Authenticator {
    keys: KeyIndex,
    jwt: Option<JwtVerifier>,
    store: Option<AuthStore>,
    tiers: BTreeMap<String, Tier>,
}

impl Authenticator {
    /// `store` is the Redis-backed copy of runtime keys and revocations, when there is Redis.
    pub fn new(config: &Config, store: Option<AuthStore>) -> Result<Self, JwtSetupError> {
        Ok(Self {
            keys: KeyIndex::new(&config.api_keys),
            jwt: config
                .jwt
                .as_ref()
                .map(|jwt| JwtVerifier::new(jwt, &config.tiers))
                .transpose()?,
            store,
            tiers: config.tiers.clone(),
        })
    }

    /// Brings the copy of runtime keys and revocations up to date (the server calls this
    /// every `store::SYNC_EVERY`).
    pub async fn sync(&self) {
        if let Some(store) = &self.store {
            store.sync().await;
        }
    }

    /// Authenticates a request by its `Authorization: Bearer <key or JWT>` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(GatewayError::MissingApiKey)?;
        let token = bearer_token(value.as_bytes()).ok_or(GatewayError::MissingApiKey)?;
        if looks_like_jwt(token) {
            return self.token(token);
        }
        // An issued key with a broken checksum is a typo or a guess: no lookup at all.
        if key_format::is_issued_shape(token) && !key_format::is_well_formed(token) {
            return Err(GatewayError::InvalidApiKey);
        }
        let digest = digest(token);
        let principal = match self.keys.find_digest(&digest) {
            Some(principal) => principal,
            None => self.runtime_key(&digest)?,
        };
        if let Some(store) = &self.store {
            good(store.key_standing(&principal.key_id))?;
        }
        Ok(principal)
    }

    fn token(&self, token: &[u8]) -> Result<Principal, GatewayError> {
        let jwt = self.jwt.as_ref().ok_or(GatewayError::InvalidApiKey)?;
        let verified = jwt
            .verify(token, unix_now())
            .map_err(GatewayError::InvalidToken)?;
        if let Some(store) = &self.store {
            good(store.token_standing(verified.jti.as_deref()))?;
        }
        Ok(verified.principal)
    }

    /// The caller of a key created at runtime, while it has not expired.
    fn runtime_key(&self, digest: &[u8; 32]) -> Result<Principal, GatewayError> {
        let record = self
            .store
            .as_ref()
            .and_then(|store| store.find_key(digest))
            .ok_or(GatewayError::InvalidApiKey)?;
        if record.expires.is_some_and(|at| at <= unix_now()) {
            return Err(GatewayError::InvalidToken(TokenRefusal::Expired));
        }
        if self.keys.has_id(&record.id) {
            tracing::error!(key_id = %record.id, "a runtime key has the id of a key in the configuration; refused");
            return Err(GatewayError::InvalidApiKey);
        }
        self.principal_of(&record).ok_or_else(|| {
            tracing::error!(key_id = %record.id, tier = %record.tier, "a runtime key names a tier this gateway does not have");
            GatewayError::InvalidApiKey
        })
    }

    fn principal_of(&self, record: &KeyRecord) -> Option<Principal> {
        let tier = self.tiers.get(&record.tier)?;
        let limits = match record.limits {
            Some(overrides) => limits_over(tier.limits, overrides, "limits").ok()?,
            None => tier.limits,
        };
        let models = if record.models.iter().any(|m| m == "*") {
            ModelAccess::All
        } else {
            ModelAccess::Only(record.models.iter().cloned().collect::<BTreeSet<_>>())
        };
        Some(Principal {
            key_id: record.id.as_str().into(),
            tier: record.tier.as_str().into(),
            models: Arc::new(models),
            limits,
            output: tier.output,
        })
    }

    /// Periodic upkeep: the JWKS file is re-read when it changed.
    pub fn upkeep(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.reload_if_changed();
        }
    }
}

/// A credential in good standing passes; a revoked one is refused, and one that cannot be
/// checked is a 503.
fn good(standing: Standing) -> Result<(), GatewayError> {
    match standing {
        Standing::Good => Ok(()),
        Standing::Revoked => Err(GatewayError::InvalidToken(TokenRefusal::Revoked)),
        Standing::Unknown => Err(GatewayError::CredentialsUnavailable),
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
