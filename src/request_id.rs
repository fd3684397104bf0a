//! Request ids: a sane incoming `x-request-id` is kept, anything else replaced by a new one.
//! Echoed on every response and forwarded upstream.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_sane(v))
            .map_or_else(Self::mint, |v| Self(v.into()))
    }

    pub fn as_arc(&self) -> Arc<str> {
        self.0.clone()
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("invariant: request ids are visible ASCII")
    }

    fn mint() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("req_{:016x}{n:08x}", process_seed()).into())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A per-process random prefix, so ids minted by different replicas do not collide.
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            HeaderValue::from_str(value).expect("test value is a valid header"),
        );
        RequestId::from_headers(&headers).to_string()
    }

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(id_for("abc-123_x.y:z"), "abc-123_x.y:z");
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            assert!(id_for(bad).starts_with("req_"), "{bad:?} is replaced");
        }
        assert_ne!(id_for(""), id_for(""), "minted ids are unique");
    }
}
