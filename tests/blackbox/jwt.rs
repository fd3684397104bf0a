//! JWTs from an identity provider against the real binary: tokens made here with real RSA,
//! EC P-256, Ed25519 and HMAC keys, each way a token can be wrong refused with its own message
//! (and never echoed), the key file rotated under a running gateway, and an unknown-`kid` flood
//! that cannot turn into a storm of file reads.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::binary::RunningBinary;
use crate::support::*;

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "sluicegate";
const HMAC_SECRET: &str = "a shared secret of the identity provider";

/// The identity provider's signing keys, made fresh for the test.
struct Provider {
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    hmac: EncodingKey,
    /// Another RSA key, for rotation and for forgeries.
    rsa2: EncodingKey,
}

fn pem(label: &str, der: &[u8]) -> Vec<u8> {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

fn rsa_key() -> EncodingKey {
    let pair =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8");
    let pem = pem("PRIVATE KEY", der.as_ref());
    EncodingKey::from_rsa_pem(&pem).expect("RSA PEM")
}

impl Provider {
    fn new() -> Self {
        let rsa = rsa_key();
        let rsa2 = rsa_key();
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .and_then(|pair| pair.to_pkcs8v1())
            .expect("EC key");
        let ed = Ed25519KeyPair::generate()
            .and_then(|pair| pair.to_pkcs8v1())
            .expect("Ed25519 key");
        Self {
            rsa,
            ec: EncodingKey::from_ec_der(ec.as_ref()),
            ed: EncodingKey::from_ed_der(ed.as_ref()),
            hmac: EncodingKey::from_secret(HMAC_SECRET.as_bytes()).expect("HMAC key"),
            rsa2,
        }
    }

    /// The public keys as a JWKS: `(kid, key, alg)` each.
    fn jwks(keys: &[(&str, &EncodingKey, Algorithm)]) -> String {
        let keys = keys
            .iter()
            .map(|(kid, key, alg)| {
                let mut jwk = Jwk::from_encoding_key(key, *alg).expect("public JWK");
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).expect("JWKS serialises")
    }
}

fn now() -> i64 {
    sluicegate::auth::unix_now() as i64
}

/// Valid claims, with `changes` applied (a `null` removes the claim).
fn claims(changes: &[(&str, Value)]) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now(), "exp": now() + 600,
    });
    for (name, value) in changes {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(*name);
        } else {
            claims[*name] = value.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

/// A token whose header is `header` (raw JSON), with an empty signature.
fn unsigned(header: &str) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims(&[]).to_string())
    )
}

fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_extension("new");
    std::fs::write(&staging, text).expect("write JWKS");
    std::fs::rename(&staging, path).expect("rename over the JWKS");
}

fn gateway_yaml(jwks: &Path) -> String {
    format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\n\
         tiers: {{free: {{}}, pro: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 2, pace: 0ms}}}}]}}, \
                  {{name: other-model, backends: [{{name: mock2, kind: mock}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: free}}]\n\
         auth:\n  jwt:\n    issuer: '{ISSUER}'\n    audience: {AUDIENCE}\n\
         \x20   algorithms: [RS256, ES256, EdDSA, HS256]\n    jwks_file: '{}'\n\
         \x20   hs256_secret_env: SLUICEGATE_TEST_JWT_SECRET\n    leeway: 30s\n    max_age: 1h\n\
         \x20   default_tier: free\n",
        sluicegate::auth::hash_key(KEY),
        jwks.display()
    )
}

async fn start(provider: &Provider, dir: &Path) -> (RunningBinary, std::path::PathBuf) {
    let jwks = dir.join("jwks.json");
    write_atomically(
        &jwks,
        &Provider::jwks(&[
            ("rsa1", &provider.rsa, Algorithm::RS256),
            ("ec1", &provider.ec, Algorithm::ES256),
            ("ed1", &provider.ed, Algorithm::EdDSA),
        ]),
    );
    let gateway = RunningBinary::start_with_env(
        &gateway_yaml(&jwks),
        &[("SLUICEGATE_TEST_JWT_SECRET", HMAC_SECRET)],
    )
    .await;
    (gateway, jwks)
}

async fn chat_status(base: &str, token: &str) -> (u16, Value) {
    let answer = post_chat(base, token, &chat_body(false)).await;
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn every_way_a_token_can_be_wrong_is_refused_with_its_own_reason() {
    let provider = Provider::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, _) = start(&provider, dir.path()).await;
    let valid = claims(&[]);
    let rs = |claims: &Value| sign(Algorithm::RS256, Some("rsa1"), &provider.rsa, claims);
    // One character inside the signature changed (not the last, whose low bits must stay zero
    // for the base64 to decode at all).
    let mut tampered = rs(&valid);
    let at = tampered.len() - 10;
    let swapped = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, swapped);
    let hs_with_rsa_public_key = {
        // The classic confusion: HS256 keyed with the RSA public key the JWKS publishes.
        let published = Provider::jwks(&[("rsa1", &provider.rsa, Algorithm::RS256)]);
        let public = EncodingKey::from_secret(published.as_bytes()).expect("HMAC key");
        sign(Algorithm::HS256, Some("rsa1"), &public, &valid)
    };
    let forged_with_embedded_jwk = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa1".into());
        header.jwk = Some(Jwk::from_encoding_key(&provider.rsa2, Algorithm::RS256).expect("jwk"));
        header.jku = Some("https://attacker.example/jwks.json".into());
        jsonwebtoken::encode(&header, &valid, &provider.rsa2).expect("signs")
    };
    let header_cut_short = {
        let token = rs(&valid);
        let parts: Vec<&str> = token.split('.').collect();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS2"#),
            parts[1],
            parts[2]
        )
    };
    let ok = "";
    let rows: Vec<(&str, String, u16, &str)> = vec![
        ("RS256", rs(&valid), 200, ok),
        (
            "ES256",
            sign(Algorithm::ES256, Some("ec1"), &provider.ec, &valid),
            200,
            ok,
        ),
        (
            "EdDSA",
            sign(Algorithm::EdDSA, Some("ed1"), &provider.ed, &valid),
            200,
            ok,
        ),
        (
            "HS256",
            sign(Algorithm::HS256, None, &provider.hmac, &valid),
            200,
            ok,
        ),
        (
            "aud as a list",
            rs(&claims(&[("aud", json!(["other", AUDIENCE]))])),
            200,
            ok,
        ),
        (
            "exp within the leeway",
            rs(&claims(&[("exp", json!(now() - 20))])),
            200,
            ok,
        ),
        (
            "nbf within the leeway",
            rs(&claims(&[("nbf", json!(now() + 20))])),
            200,
            ok,
        ),
        (
            "tier claim",
            rs(&claims(&[("tier", json!("pro"))])),
            200,
            ok,
        ),
        (
            "alg none",
            unsigned(r#"{"alg":"none","typ":"JWT"}"#),
            401,
            "alg none",
        ),
        ("alg NoNe", unsigned(r#"{"alg":"NoNe"}"#), 401, "alg none"),
        (
            "HS256 keyed with the RSA public key",
            hs_with_rsa_public_key,
            401,
            "signature is invalid",
        ),
        (
            "algorithm not configured",
            sign(Algorithm::RS384, Some("rsa1"), &provider.rsa, &valid),
            401,
            "algorithm is not accepted",
        ),
        ("tampered signature", tampered, 401, "signature is invalid"),
        (
            "embedded jwk and jku ignored",
            forged_with_embedded_jwk,
            401,
            "signature is invalid",
        ),
        (
            "expired past the leeway",
            rs(&claims(&[("exp", json!(now() - 45))])),
            401,
            "expired",
        ),
        (
            "nbf past the leeway",
            rs(&claims(&[("nbf", json!(now() + 120))])),
            401,
            "not valid yet",
        ),
        (
            "iat in the future",
            rs(&claims(&[("iat", json!(now() + 120))])),
            401,
            "issued in the future",
        ),
        (
            "iat older than max_age",
            rs(&claims(&[("iat", json!(now() - 7_200))])),
            401,
            "older than",
        ),
        (
            "iat missing",
            rs(&claims(&[("iat", Value::Null)])),
            401,
            "`iat`",
        ),
        (
            "wrong issuer",
            rs(&claims(&[("iss", json!("https://evil.example/"))])),
            401,
            "issuer",
        ),
        (
            "missing issuer",
            rs(&claims(&[("iss", Value::Null)])),
            401,
            "`iss`",
        ),
        (
            "wrong audience",
            rs(&claims(&[("aud", json!("someone-else"))])),
            401,
            "audience",
        ),
        (
            "missing audience",
            rs(&claims(&[("aud", Value::Null)])),
            401,
            "`aud`",
        ),
        (
            "missing exp",
            rs(&claims(&[("exp", Value::Null)])),
            401,
            "`exp`",
        ),
        (
            "exp as a string",
            rs(&claims(&[("exp", json!((now() + 600).to_string()))])),
            401,
            "wrong type",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, Some("nope"), &provider.rsa, &valid),
            401,
            "unknown",
        ),
        (
            "no kid",
            sign(Algorithm::RS256, None, &provider.rsa, &valid),
            401,
            "no key id",
        ),
        (
            "EC token naming the RSA kid",
            sign(Algorithm::ES256, Some("rsa1"), &provider.ec, &valid),
            401,
            "does not match",
        ),
        ("header cut short", header_cut_short, 401, "malformed"),
        (
            "unknown tier",
            rs(&claims(&[("tier", json!("platinum"))])),
            401,
            "tier",
        ),
        (
            "models not a list",
            rs(&claims(&[("models", json!("test-model"))])),
            401,
            "wrong type",
        ),
        (
            "missing subject",
            rs(&claims(&[("sub", Value::Null)])),
            401,
            "subject",
        ),
    ];
    let mut tokens = Vec::new();
    for (case, token, status, reason) in rows {
        let (got, body) = chat_status(&gateway.base(), &token).await;
        assert_eq!(got, status, "{case}: {body}");
        if status == 401 {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(reason), "{case}: {message}");
            assert_eq!(body["error"]["code"], "invalid_api_key", "{case}");
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!message.contains(part), "{case}: the token is echoed");
            }
        }
        tokens.push(token);
    }

    // The models claim limits what the caller sees and may use.
    let only_other = rs(&claims(&[("models", json!(["other-model"]))]));
    let (status, body) = chat_status(&gateway.base(), &only_other).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("model_not_allowed"))
    );
    let listed: Value = http()
        .get(format!("{}/v1/models", gateway.base()))
        .bearer_auth(&only_other)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");

    // Nothing of any token reached the log.
    tokio::time::sleep(ms(200)).await;
    let logs = gateway.logs().join("\n");
    for token in &tokens {
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!logs.contains(part), "a token part is in the log");
        }
    }
    assert!(
        logs.contains(r#""key_id":"jwt:user-1""#),
        "the subject is the identity"
    );
}

#[tokio::test]
async fn a_rotated_key_file_is_used_without_a_restart() {
    let provider = Provider::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, jwks) = start(&provider, dir.path()).await;
    let old = sign(Algorithm::RS256, Some("rsa1"), &provider.rsa, &claims(&[]));
    let new = sign(Algorithm::RS256, Some("rsa2"), &provider.rsa2, &claims(&[]));
    assert_eq!(chat_status(&gateway.base(), &old).await.0, 200);
    assert_eq!(chat_status(&gateway.base(), &new).await.0, 401);

    // The provider rotates: rsa1 out, rsa2 in, the new file renamed over the old one.
    write_atomically(
        &jwks,
        &Provider::jwks(&[("rsa2", &provider.rsa2, Algorithm::RS256)]),
    );
    within(ms(5_000), "the new key to be accepted", async {
        while chat_status(&gateway.base(), &new).await.0 != 200 {
            tokio::time::sleep(ms(50)).await;
        }
    })
    .await;
    // Verified before the rotation or not, a token of the removed key is refused now.
    let (status, body) = chat_status(&gateway.base(), &old).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown")
    );
}

#[tokio::test]
async fn an_unknown_kid_flood_reads_the_key_file_a_bounded_number_of_times() {
    let provider = Provider::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, jwks) = start(&provider, dir.path()).await;
    let keys = Provider::jwks(&[("rsa1", &provider.rsa, Algorithm::RS256)]);
    let started = tokio::time::Instant::now();
    let client = http();
    for i in 0..1_000 {
        // The file keeps changing, so every look at it would be a read.
        if i % 20 == 0 {
            write_atomically(&jwks, &keys);
        }
        let token = sign(
            Algorithm::RS256,
            Some(&format!("unknown-{i}")),
            &provider.rsa,
            &claims(&[]),
        );
        let answer = client
            .post(format!("{}/v1/chat/completions", gateway.base()))
            .bearer_auth(&token)
            .json(&chat_body(false))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), 401);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let exposition = metrics_text(&gateway.base()).await;
    let reads: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("sluicegate_jwks_reads_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        reads <= (2 * seconds) as f64,
        "{reads} reads in {seconds} s: at most one a second from housekeeping and one from unknown kids"
    );
}

#[test]
fn check_config_refuses_none_a_bare_hs256_and_a_broken_key_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{not json").expect("write");
    let base = |jwt: &str| {
        format!(
            "tiers: {{free: {{}}}}\nmodels: [{{name: m, backends: [{{name: b, kind: mock}}]}}]\n\
             auth:\n  jwt: {{issuer: i, audience: a, default_tier: free, {jwt}}}\n"
        )
    };
    for (jwt, field) in [
        (
            format!(
                "algorithms: [RS256, none], jwks_file: '{}'",
                broken.display()
            ),
            "auth.jwt.algorithms",
        ),
        ("algorithms: [HS256]".to_owned(), "auth.jwt.algorithms"),
        (
            format!("algorithms: [RS256], jwks_file: '{}'", broken.display()),
            "auth.jwt.jwks_file",
        ),
    ] {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(base(&jwt).as_bytes()).expect("write");
        let output = std::process::Command::new(crate::support::binary::BINARY)
            .args(["check-config", file.path().to_str().expect("utf-8")])
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{jwt}");
        assert!(stderr.contains(field), "{jwt}: {stderr}");
    }
}
