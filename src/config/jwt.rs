//! The `auth.jwt` section: which tokens from an identity provider are accepted, and how their
//! claims become a caller. Checked here as far as a file can be: algorithms, the key file, the
//! secret's variable, the default tier.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use super::{ConfigError, Tier};

/// Largest JWKS file read, here and when it is reloaded.
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// RFC 7518: an HS256 key at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;
const MAX_LEEWAY: Duration = Duration::from_secs(600);
const MAX_AGE_BOUND: Duration = Duration::from_secs(366 * 24 * 60 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default)]
    pub claims: ClaimNamesFile,
    pub default_tier: String,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_max_age() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNamesFile {
    pub subject: String,
    pub tier: String,
    pub models: String,
}

impl Default for ClaimNamesFile {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            tier: "tier".into(),
            models: "models".into(),
        }
    }
}

/// Validated JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    /// Never empty, never `none`; HS256 only with a secret.
    pub algorithms: Vec<Algorithm>,
    pub jwks_file: Option<PathBuf>,
    pub hs256_secret: Option<SecretBytes>,
    pub leeway: Duration,
    /// A token issued (`iat`) longer ago than this is refused.
    pub max_age: Duration,
    /// Claim names: the subject (the identity limits apply to), the tier, the model list.
    pub subject_claim: String,
    pub tier_claim: String,
    pub models_claim: String,
    /// The tier of a token without a tier claim; a configured tier.
    pub default_tier: String,
}

/// A secret taken from the environment as raw bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

pub(super) fn jwt(file: JwtFile, tiers: &BTreeMap<String, Tier>) -> Result<JwtConfig, ConfigError> {
    let invalid =
        |field: &str, message: String| ConfigError::invalid(format!("auth.jwt.{field}"), message);
    if file.issuer.is_empty() {
        return Err(invalid("issuer", "must not be empty".into()));
    }
    if file.audience.is_empty() {
        return Err(invalid("audience", "must not be empty".into()));
    }
    if file.algorithms.is_empty() {
        return Err(invalid(
            "algorithms",
            "must list at least one algorithm".into(),
        ));
    }
    let algorithms = file
        .algorithms
        .iter()
        .map(|name| algorithm(name).map_err(|message| invalid("algorithms", message)))
        .collect::<Result<Vec<_>, _>>()?;
    let hs256_secret = match &file.hs256_secret_env {
        Some(var) => Some(secret_bytes(var).map_err(|m| invalid("hs256_secret_env", m))?),
        None => None,
    };
    if algorithms.contains(&Algorithm::HS256) && hs256_secret.is_none() {
        return Err(invalid(
            "algorithms",
            "HS256 needs `hs256_secret_env` (the shared secret's environment variable)".into(),
        ));
    }
    if hs256_secret.is_some() && !algorithms.contains(&Algorithm::HS256) {
        return Err(invalid(
            "hs256_secret_env",
            "is set but HS256 is not in `algorithms`".into(),
        ));
    }
    if let Some(path) = &file.jwks_file {
        read_jwks(path).map_err(|message| invalid("jwks_file", message))?;
    } else if hs256_secret.is_none() {
        return Err(invalid(
            "jwks_file",
            "is needed unless HS256 with `hs256_secret_env` is used".into(),
        ));
    }
    if !tiers.contains_key(&file.default_tier) {
        return Err(invalid(
            "default_tier",
            format!("names no configured tier: {:?}", file.default_tier),
        ));
    }
    if file.leeway > MAX_LEEWAY {
        return Err(invalid("leeway", "must be at most 10m".into()));
    }
    if file.max_age.is_zero() || file.max_age > MAX_AGE_BOUND {
        return Err(invalid("max_age", "must be between 1s and 366d".into()));
    }
    for (field, name) in [
        ("claims.subject", &file.claims.subject),
        ("claims.tier", &file.claims.tier),
        ("claims.models", &file.claims.models),
    ] {
        if name.is_empty() {
            return Err(invalid(field, "must name a claim".into()));
        }
    }
    Ok(JwtConfig {
        issuer: file.issuer,
        audience: file.audience,
        algorithms,
        jwks_file: file.jwks_file,
        hs256_secret,
        leeway: file.leeway,
        max_age: file.max_age,
        subject_claim: file.claims.subject,
        tier_claim: file.claims.tier,
        models_claim: file.claims.models,
        default_tier: file.default_tier,
    })
}

/// An accepted algorithm name; `none` in any spelling never is, and of the shared-secret ones
/// only HS256.
fn algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` is never accepted: unsigned tokens would pass".into());
    }
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    if matches!(algorithm, Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!("{name} is not supported; shared secrets use HS256"));
    }
    Ok(algorithm)
}

/// The environment variable's value as raw bytes.
fn secret_bytes(var: &str) -> Result<SecretBytes, String> {
    match std::env::var_os(var) {
        Some(value) if value.len() >= MIN_SECRET_BYTES => {
            Ok(SecretBytes(value.as_bytes().to_vec()))
        }
        Some(value) if !value.is_empty() => Err(format!(
            "environment variable `{var}` holds fewer than {MIN_SECRET_BYTES} bytes; an HS256 \
             secret needs at least 256 bits"
        )),
        _ => Err(format!("environment variable `{var}` is not set")),
    }
}

/// Reads and parses a JWKS file: a JSON Web Key Set whose every key has a `kid` and is usable
/// for verification.
pub fn read_jwks(path: &std::path::Path) -> Result<JwkSet, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a JSON Web Key Set: {e}", path.display()))?;
    for (i, key) in set.keys.iter().enumerate() {
        let kid = key
            .common
            .key_id
            .as_deref()
            .ok_or_else(|| format!("key {i} of {} has no `kid`", path.display()))?;
        jsonwebtoken::DecodingKey::from_jwk(key)
            .map_err(|e| format!("key {kid:?} of {} is not usable: {e}", path.display()))?;
    }
    Ok(set)
}
