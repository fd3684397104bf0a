//! API keys held as SHA-256 digests. The raw key is hashed on arrival and never stored or
//! logged; the digest is looked up, then compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Principal;
use crate::config::ApiKey;

/// The configured keys, by digest.
#[derive(Debug, Default)]
pub struct KeyIndex {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl KeyIndex {
    pub fn new(keys: &[ApiKey]) -> Self {
        let by_digest = keys
            .iter()
            .map(|key| {
                let principal = Principal {
                    key_id: key.id.as_str().into(),
                    tier: key.tier.as_str().into(),
                    models: Arc::new(key.models.clone()),
                    limits: key.limits,
                    output: key.output,
                };
                (key.sha256, principal)
            })
            .collect();
        Self { by_digest }
    }

    /// The principal for a presented key, if it is configured. The map lookup sees only the
    /// digest, so its timing reveals nothing usable about the key; the final equality check is
    /// constant-time all the same.
    pub fn find(&self, presented: &[u8]) -> Option<Principal> {
        self.find_digest(&digest(presented))
    }

    /// Whether a configured key has this id.
    pub fn has_id(&self, id: &str) -> bool {
        self.by_digest.values().any(|p| &*p.key_id == id)
    }

    /// The principal whose key has `digest`.
    pub fn find_digest(&self, digest: &[u8; 32]) -> Option<Principal> {
        let (stored, principal) = self.by_digest.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then(|| principal.clone())
    }
}

/// The SHA-256 digest of a presented key.
pub fn digest(presented: &[u8]) -> [u8; 32] {
    Sha256::digest(presented).into()
}

/// The hex SHA-256 digest to paste into `api_keys[].sha256`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelAccess;

    #[test]
    fn finds_only_the_configured_key() {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hash_key("sk-right"), &mut sha256).expect("hex digest");
        let index = KeyIndex::new(&[ApiKey {
            id: "k1".into(),
            sha256,
            tier: "free".into(),
            models: ModelAccess::All,
            limits: Default::default(),
            output: Default::default(),
        }]);
        assert_eq!(index.find(b"sk-right").map(|p| p.key_id), Some("k1".into()));
        assert!(index.find(b"sk-wrong").is_none(), "a wrong key is rejected");
        assert!(index.find(b"").is_none(), "an empty key is rejected");
    }
}
