//! JWTs from an identity provider, verified locally: signature by a key from the JWKS file (by
//! `kid`) or the HS256 secret, with only the configured algorithms; then `exp`, `nbf`, `iat`
//! (not in the future, not older than `max_age`), `iss` and `aud` (both required), and the
//! subject, tier and models claims that make the caller a [`Principal`].
//!
//! The header is untrusted: its `alg` must be configured and match the family of the key its
//! `kid` names; `jku`, `x5u`, `x5c` and an embedded `jwk` are never used to find a key. The key
//! file is re-read when it changes (checked every second, and at most once a second when a
//! token names an unknown `kid`, by one caller while the others carry on). A verified token is
//! remembered (bounded) until its `exp` or the end of its `max_age`, whichever is first, and
//! only while the keys it was verified with are unchanged, so its signature is not checked on
//! every request.
//!
//! Invariant: no error message, log line or span carries the token or any part of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Principal;
use crate::config::{JwtConfig, ModelAccess, Tier, read_jwks};
use crate::telemetry::metrics;

/// Verified tokens remembered at most; past it, expired ones go, then all.
const MAX_REMEMBERED: usize = 16_384;
/// The longest subject used as an identity as it is; longer or unusual ones are hashed.
const MAX_PLAIN_SUBJECT: usize = 64;
/// How often an unknown `kid` may make the key file be read again.
const UNKNOWN_KID_REREAD_EVERY: Duration = Duration::from_secs(1);

/// Why a token was refused: the message says what is wrong, never what the token holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the token is malformed")]
    Malformed,
    #[error("unsigned tokens (alg none) are not accepted")]
    Unsigned,
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAccepted,
    #[error("the token names no key id (kid)")]
    MissingKeyId,
    #[error("the token's key id (kid) is unknown")]
    UnknownKeyId,
    #[error("the token's algorithm does not match the kind of its key")]
    KeyAlgorithmMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token is older than the accepted maximum age (iat)")]
    TooOld,
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    #[error("the token lacks the `exp` claim")]
    MissingExpiry,
    #[error("the token lacks the `iss` claim")]
    MissingIssuer,
    #[error("the token lacks the `aud` claim")]
    MissingAudience,
    #[error("the token lacks the `iat` claim")]
    MissingIssuedAt,
    #[error("the token lacks its subject claim")]
    MissingSubject,
    #[error("a claim of the token has the wrong type")]
    WrongClaimType,
    #[error("the token's tier is not a configured tier")]
    UnknownTier,
    #[error("the token has been revoked")]
    Revoked,
}

/// A verified token's caller and what revocation needs.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub principal: Principal,
    /// The token's id, when it has one (what `sluicegate revoke --jti` names).
    pub jti: Option<Arc<str>>,
    /// Unix seconds.
    pub expires: u64,
}

/// The JWT side of authentication.
#[derive(Debug)]
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    max_age: u64,
    subject_claim: String,
    tier_claim: String,
    models_claim: String,
    default_tier: String,
    tiers: BTreeMap<String, Tier>,
    hmac: Option<DecodingKey>,
    jwks: Option<KeyFile>,
    remembered: Mutex<HashMap<[u8; 32], Remembered>>,
}

/// A verified token, until when it may be taken as verified, and under which keys.
#[derive(Debug, Clone)]
struct Remembered {
    token: VerifiedToken,
    /// Unix seconds: its `exp`, or sooner when `max_age` ends it first.
    until: u64,
    /// The key file's generation it was verified under.
    generation: u64,
}

/// Why the verifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    #[error("auth.jwt.jwks_file: {0}")]
    KeyFile(String),
    #[error("auth.jwt: the signature self-check failed ({0}); is a crypto backend built in?")]
    SelfCheck(String),
}

impl JwtVerifier {
    /// Loads the keys and runs a sign-and-verify self-check, so a broken key file or a missing
    /// crypto backend stops the start with a clear message instead of failing every request.
    pub fn new(config: &JwtConfig, tiers: &BTreeMap<String, Tier>) -> Result<Self, JwtSetupError> {
        self_check().map_err(JwtSetupError::SelfCheck)?;
        let hmac = match &config.hs256_secret {
            Some(secret) => Some(
                DecodingKey::from_secret(secret.expose())
                    .map_err(|e| JwtSetupError::KeyFile(e.to_string()))?,
            ),
            None => None,
        };
        let jwks = match &config.jwks_file {
            Some(path) => Some(KeyFile::load(path.clone()).map_err(JwtSetupError::KeyFile)?),
            None => None,
        };
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            algorithms: config.algorithms.clone(),
            leeway: config.leeway.as_secs(),
            max_age: config.max_age.as_secs(),
            subject_claim: config.subject_claim.clone(),
            tier_claim: config.tier_claim.clone(),
            models_claim: config.models_claim.clone(),
            default_tier: config.default_tier.clone(),
            tiers: tiers.clone(),
            hmac,
            jwks,
            remembered: Mutex::default(),
        })
    }

    /// Re-reads the key file when it changed (the server's housekeeping calls this).
    pub fn reload_if_changed(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.reload_if_changed();
        }
    }

    /// Verifies `token` (already known to look like a JWT) at `now` (Unix seconds).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<VerifiedToken, TokenRefusal> {
        let fingerprint: [u8; 32] = Sha256::digest(token).into();
        if let Some(known) = self.remembered(&fingerprint, now) {
            return Ok(known);
        }
        let (verified, issued) = self.verify_uncached(token, now)?;
        let until = verified.expires.min(
            issued
                .saturating_add(self.max_age)
                .saturating_add(self.leeway),
        );
        self.remember(fingerprint, &verified, until, now);
        Ok(verified)
    }

    /// The verified token and its `iat`.
    fn verify_uncached(
        &self,
        token: &[u8],
        now: u64,
    ) -> Result<(VerifiedToken, u64), TokenRefusal> {
        let header = Header::parse(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenRefusal::AlgorithmNotAccepted);
        }
        let key = self.key_for(&header)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| refusal(e.kind(), token))?
            .claims;
        let issued = self.check_issued_at(&claims, now)?;
        Ok((self.principal(&claims)?, issued))
    }

    /// The key the header's `alg` and `kid` select: the HS256 secret, or the JWKS key of that
    /// `kid`, which must be of the algorithm's family.
    fn key_for(&self, header: &Header) -> Result<DecodingKey, TokenRefusal> {
        if header.alg.family() == AlgorithmFamily::Hmac {
            return self.hmac.clone().ok_or(TokenRefusal::AlgorithmNotAccepted);
        }
        let jwks = self.jwks.as_ref().ok_or(TokenRefusal::UnknownKeyId)?;
        let kid = header.kid.as_deref().ok_or(TokenRefusal::MissingKeyId)?;
        let key = jwks.find(kid).ok_or(TokenRefusal::UnknownKeyId)?;
        if key.decoding.family() != header.alg.family()
            || key.algorithm.is_some_and(|alg| alg != header.alg)
        {
            return Err(TokenRefusal::KeyAlgorithmMismatch);
        }
        Ok(key.decoding.clone())
    }

    /// `iat` is required, not in the future (beyond the leeway) and not older than `max_age`;
    /// returns it.
    fn check_issued_at(&self, claims: &Map<String, Value>, now: u64) -> Result<u64, TokenRefusal> {
        let issued = match claims.get("iat") {
            None => return Err(TokenRefusal::MissingIssuedAt),
            Some(value) => value.as_u64().ok_or(TokenRefusal::WrongClaimType)?,
        };
        if issued > now.saturating_add(self.leeway) {
            return Err(TokenRefusal::IssuedInFuture);
        }
        if now.saturating_sub(issued) > self.max_age.saturating_add(self.leeway) {
            return Err(TokenRefusal::TooOld);
        }
        Ok(issued)
    }

    /// The caller the claims describe: the subject as its identity, the tier claim (or the
    /// default tier) for its limits, the models claim (absent: every model) for its access.
    fn principal(&self, claims: &Map<String, Value>) -> Result<VerifiedToken, TokenRefusal> {
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(subject)) if !subject.is_empty() => subject,
            Some(Value::String(_)) | None => return Err(TokenRefusal::MissingSubject),
            Some(_) => return Err(TokenRefusal::WrongClaimType),
        };
        let tier_name = match claims.get(&self.tier_claim) {
            None | Some(Value::Null) => self.default_tier.as_str(),
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(TokenRefusal::WrongClaimType),
        };
        let tier = self.tiers.get(tier_name).ok_or(TokenRefusal::UnknownTier)?;
        let models = match claims.get(&self.models_claim) {
            None | Some(Value::Null) => ModelAccess::All,
            Some(Value::Array(names)) => names
                .iter()
                .map(|name| name.as_str().map(str::to_owned))
                .collect::<Option<BTreeSet<String>>>()
                .map(ModelAccess::Only)
                .ok_or(TokenRefusal::WrongClaimType)?,
            Some(_) => return Err(TokenRefusal::WrongClaimType),
        };
        let jti = match claims.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(jti)) => Some(Arc::from(jti.as_str())),
            Some(_) => return Err(TokenRefusal::WrongClaimType),
        };
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenRefusal::WrongClaimType)?;
        Ok(VerifiedToken {
            principal: Principal {
                key_id: subject_identity(subject).into(),
                tier: tier_name.into(),
                models: Arc::new(models),
                limits: tier.limits,
                output: tier.output,
            },
            jti,
            expires,
        })
    }

    /// The key file's generation (0 without one): a reload that changed the keys makes every
    /// remembered token be verified again.
    fn generation(&self) -> u64 {
        self.jwks.as_ref().map_or(0, KeyFile::generation)
    }

    fn remembered(&self, fingerprint: &[u8; 32], now: u64) -> Option<VerifiedToken> {
        let generation = self.generation();
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        remembered
            .get(fingerprint)
            .filter(|known| known.until > now && known.generation == generation)
            .map(|known| known.token.clone())
    }

    fn remember(&self, fingerprint: [u8; 32], verified: &VerifiedToken, until: u64, now: u64) {
        let generation = self.generation();
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, known| known.until > now && known.generation == generation);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        let token = verified.clone();
        remembered.insert(
            fingerprint,
            Remembered {
                token,
                until,
                generation,
            },
        );
    }
}

/// Whether a bearer value is a compact JWS (three base64url segments, the first a JSON object)
/// rather than an API key.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    let mut segments = token.split(|b| *b == b'.');
    let (Some(header), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .is_ok_and(|json| json.trim_ascii_start().first() == Some(&b'{'))
}

/// The parts of the header that choose the key, read without trusting it.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
}

impl Header {
    fn parse(token: &[u8]) -> Result<Self, TokenRefusal> {
        let encoded = token
            .split(|b| *b == b'.')
            .next()
            .ok_or(TokenRefusal::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenRefusal::Malformed)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&json).map_err(|_| TokenRefusal::Malformed)?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) if alg.eq_ignore_ascii_case("none") => {
                return Err(TokenRefusal::Unsigned);
            }
            Some(Value::String(alg)) => alg
                .parse::<Algorithm>()
                .map_err(|_| TokenRefusal::AlgorithmNotAccepted)?,
            _ => return Err(TokenRefusal::Malformed),
        };
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(TokenRefusal::Malformed),
        };
        Ok(Self { alg, kid })
    }
}

/// The error a failed `decode` of `token` becomes.
fn refusal(kind: &ErrorKind, token: &[u8]) -> TokenRefusal {
    match kind {
        ErrorKind::InvalidSignature => TokenRefusal::BadSignature,
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRefusal::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenRefusal::KeyAlgorithmMismatch
        }
        // The crate reports a claim of the wrong type (`exp` as a string) as missing; the
        // payload (its signature already checked) tells the two apart.
        ErrorKind::MissingRequiredClaim(claim) if claim_present(token, claim) => {
            TokenRefusal::WrongClaimType
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenRefusal::MissingExpiry,
            "iss" => TokenRefusal::MissingIssuer,
            "aud" => TokenRefusal::MissingAudience,
            _ => TokenRefusal::Malformed,
        },
        ErrorKind::InvalidClaimFormat(_) => TokenRefusal::WrongClaimType,
        _ => TokenRefusal::Malformed,
    }
}

/// Whether the payload of `token` has `claim` at all (whatever its type).
fn claim_present(token: &[u8], claim: &str) -> bool {
    token
        .split(|b| *b == b'.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
        .is_some_and(|claims| claims.get(claim).is_some_and(|v| !v.is_null()))
}

/// The identity a subject's limits and usage are kept under: `jwt:` and the subject when it
/// is short and plain, else `jwt:#` and a digest of it (so no subject can reach into another
/// key's Redis keys, and no two subjects share one).
fn subject_identity(subject: &str) -> String {
    let plain = subject.len() <= MAX_PLAIN_SUBJECT
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'));
    if plain {
        format!("jwt:{subject}")
    } else {
        format!(
            "jwt:#{}",
            &hex::encode(Sha256::digest(subject.as_bytes()))[..32]
        )
    }
}

/// Signs and verifies a throwaway token, proving the crypto backend works.
fn self_check() -> Result<(), String> {
    let secret = b"sluicegate self-check";
    let claims = serde_json::json!({"exp": u64::MAX / 2});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
        &validation,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One verification key of the JWKS file.
#[derive(Debug, Clone)]
struct FileKey {
    decoding: DecodingKey,
    /// The key's own `alg`, when the file names one.
    algorithm: Option<Algorithm>,
}

/// The JWKS file, its keys by `kid`, and what tells that it changed.
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
    keys: RwLock<Arc<HashMap<String, FileKey>>>,
    /// Raised by every reload that changed the keys; tokens verified before are checked again.
    generation: AtomicU64,
    /// Held across look, parse and swap, so two reloads never interleave.
    reloading: Mutex<Option<Stamp>>,
    /// When an unknown `kid` last made the file be looked at.
    last_forced: Mutex<Option<Instant>>,
}

/// What identifies one version of the file: a rename over it changes the inode, an edit
/// the length or modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl KeyFile {
    fn load(path: PathBuf) -> Result<Self, String> {
        let stamp = stamp(&path);
        let keys = parse_keys(&path)?;
        Ok(Self {
            path,
            keys: RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(stamp),
            last_forced: Mutex::new(None),
        })
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn find(&self, kid: &str) -> Option<FileKey> {
        if let Some(key) = self.current().get(kid) {
            return Some(key.clone());
        }
        // Perhaps the provider rotated its keys: one caller a second looks again; the others
        // do not wait for it.
        if let Ok(mut last) = self.last_forced.try_lock()
            && last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_REREAD_EVERY)
        {
            *last = Some(Instant::now());
            drop(last);
            self.reload_if_changed();
        }
        self.current().get(kid).cloned()
    }

    fn current(&self) -> Arc<HashMap<String, FileKey>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reload_if_changed(&self) {
        let mut last = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path);
        if *last == now {
            return;
        }
        *last = now;
        match parse_keys(&self.path) {
            Ok(keys) => {
                metrics::record_jwks_read("ok");
                tracing::info!(keys = keys.len(), "JWKS file re-read");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                metrics::record_jwks_read("error");
                tracing::error!(%error, "JWKS file changed but cannot be used; keeping the keys in use");
            }
        }
    }
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: metadata.ino(),
        len: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// The signing keys of the file. A key that cannot verify (an unsupported curve, one marked
/// for encryption) is left out with an error in the log, so one bad entry does not stop a
/// rotation; a file with no usable key at all is an error.
fn parse_keys(path: &std::path::Path) -> Result<HashMap<String, FileKey>, String> {
    let set = read_jwks(path)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let for_encryption = matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        );
        let decoding = match DecodingKey::from_jwk(jwk) {
            Ok(decoding) if !for_encryption => decoding,
            Ok(_) => {
                tracing::error!(%kid, "a JWKS key is for encryption; not used to verify");
                continue;
            }
            Err(error) => {
                tracing::error!(%kid, %error, "a JWKS key cannot verify; left out");
                continue;
            }
        };
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|alg| Algorithm::try_from(alg).ok());
        keys.insert(
            kid,
            FileKey {
                decoding,
                algorithm,
            },
        );
    }
    if keys.is_empty() {
        return Err(format!("{} has no usable signing key", path.display()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compact_jws_looks_like_a_jwt() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        assert!(looks_like_jwt(format!("{header}.e30.c2ln").as_bytes()));
        for not in [
            "sk-sg-abc".to_owned(),
            format!("{header}.e30"),
            format!("{header}.e30.sig.more"),
            "bm90IGpzb24.e30.sig".to_owned(),
            "!!!.e30.sig".to_owned(),
        ] {
            assert!(!looks_like_jwt(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn subjects_become_identities_that_cannot_collide_or_escape() {
        assert_eq!(
            subject_identity("alice@example.com"),
            "jwt:alice@example.com"
        );
        let odd = subject_identity("a}{b");
        assert!(odd.starts_with("jwt:#") && !odd.contains('{'), "{odd}");
        assert_ne!(subject_identity("a}{b"), subject_identity("a{}b"));
        assert!(subject_identity(&"x".repeat(1000)).len() < 40);
    }

    #[test]
    fn alg_none_in_any_case_is_refused_as_unsigned() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let token = format!("{header}.e30.");
            assert_eq!(
                Header::parse(token.as_bytes()).err(),
                Some(TokenRefusal::Unsigned)
            );
        }
    }
}
