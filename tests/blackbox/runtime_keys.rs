//! Credentials changed while gateways run: keys created and revoked with the CLI, JWTs revoked
//! by `jti`, all seen by two gateway processes sharing a real redis-server within a second.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::binary::{RunningBinary, run_cli};
use crate::support::*;

const SECRET: &str = "the identity provider's shared secret";
const ENV: [(&str, &str); 1] = [("SLUICEGATE_TEST_JWT_SECRET", SECRET)];

fn yaml(redis: &str) -> String {
    format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\n\
         tiers: {{basic: {{}}, pro: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 2, pace: 0ms}}}}]}}]\n\
         redis: {{url: '{redis}', on_error: local}}\n\
         auth:\n  jwt: {{issuer: idp, audience: sluicegate, algorithms: [HS256], \
         hs256_secret_env: SLUICEGATE_TEST_JWT_SECRET, default_tier: basic}}\n"
    )
}

async fn status(gateway: &RunningBinary, bearer: &str) -> (u16, String) {
    let answer = post_chat(&gateway.base(), bearer, &chat_body(false)).await;
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

/// Waits until every gateway answers `bearer` with `expected`; returns how long that took.
async fn until_all(gateways: &[&RunningBinary], bearer: &str, expected: u16) -> Duration {
    let started = tokio::time::Instant::now();
    within(ms(5_000), "every gateway to agree", async {
        for gateway in gateways {
            while status(gateway, bearer).await.0 != expected {
                tokio::time::sleep(ms(20)).await;
            }
        }
    })
    .await;
    started.elapsed()
}

async fn two_gateways(yaml: &str) -> (RunningBinary, RunningBinary) {
    (
        RunningBinary::start_with_env(yaml, &ENV).await,
        RunningBinary::start_with_env(yaml, &ENV).await,
    )
}

#[tokio::test]
async fn a_key_created_and_revoked_with_the_cli_takes_effect_on_every_replica_within_a_second() {
    let redis = RedisServer::spawn().await;
    let yaml = yaml(&redis.url());
    let (a, b) = two_gateways(&yaml).await;

    let (ok, stdout, stderr) = run_cli(
        &yaml,
        &["keys", "create", "--tier", "pro", "--id", "team-x"],
        &ENV,
    )
    .await;
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    assert!(key.starts_with("sk-sg-") && key.len() == 44, "{key}");
    let took = until_all(&[&a, &b], &key, 200).await;
    assert!(
        took < Duration::from_secs(1),
        "accepted everywhere after {took:?}"
    );

    // A typo fails the checksum before anything is looked up.
    let mut typo = key.clone();
    typo.replace_range(10..11, if &key[10..11] == "A" { "B" } else { "A" });
    assert_eq!(status(&a, &typo).await.0, 401);

    let (ok, listed, _) = run_cli(&yaml, &["keys", "list"], &ENV).await;
    assert!(ok);
    assert!(
        listed.contains("team-x") && listed.contains("pro"),
        "{listed}"
    );
    assert!(!listed.contains(&key[6..]), "the key is not listed");
    assert!(
        !listed.contains(&sluicegate::auth::hash_key(&key)),
        "nor its digest"
    );

    let (ok, _, stderr) = run_cli(&yaml, &["keys", "revoke", "team-x"], &ENV).await;
    assert!(ok, "{stderr}");
    let took = until_all(&[&a, &b], &key, 401).await;
    assert!(
        took < Duration::from_secs(1),
        "refused everywhere after {took:?}"
    );
    // A typo in the id is an error, not a silent success; a revoked id is not reused.
    let (ok, _, stderr) = run_cli(&yaml, &["keys", "revoke", "team-y"], &ENV).await;
    assert!(!ok && stderr.contains("no runtime key"), "{stderr}");
    let (ok, _, stderr) = run_cli(
        &yaml,
        &["keys", "create", "--tier", "pro", "--id", "team-x"],
        &ENV,
    )
    .await;
    assert!(!ok && stderr.contains("revoked"), "{stderr}");

    // Nothing of the key in either gateway's log.
    let logs = [a.logs(), b.logs()].concat().join("\n");
    assert!(!logs.contains(&key[6..]) && !logs.contains(&sluicegate::auth::hash_key(&key)));
    assert!(logs.contains(r#""key_id":"team-x""#), "the id is logged");
}

#[tokio::test]
async fn an_expired_runtime_key_is_refused() {
    let redis = RedisServer::spawn().await;
    let yaml = yaml(&redis.url());
    let gateway = RunningBinary::start_with_env(&yaml, &ENV).await;
    let (ok, stdout, stderr) = run_cli(
        &yaml,
        &["keys", "create", "--tier", "basic", "--expires", "2s"],
        &ENV,
    )
    .await;
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    until_all(&[&gateway], &key, 200).await;
    tokio::time::sleep(ms(2_100)).await;
    let (code, body) = status(&gateway, &key).await;
    assert_eq!(code, 401);
    assert!(body.contains("expired"), "{body}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_every_replica_within_a_second() {
    let redis = RedisServer::spawn().await;
    let yaml = yaml(&redis.url());
    let (a, b) = two_gateways(&yaml).await;
    let now = sluicegate::auth::unix_now();
    let claims = json!({"iss": "idp", "aud": "sluicegate", "sub": "user-9", "iat": now, "exp": now + 600, "jti": "token-42"});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("signs");
    // Verified (and remembered) on both before the revocation.
    until_all(&[&a, &b], &token, 200).await;

    let (ok, _, stderr) = run_cli(&yaml, &["revoke", "--jti", "token-42"], &ENV).await;
    assert!(ok, "{stderr}");
    let took = until_all(&[&a, &b], &token, 401).await;
    assert!(
        took < Duration::from_secs(1),
        "refused everywhere after {took:?}"
    );
    let (_, body) = status(&a, &token).await;
    assert!(body.contains("revoked"), "{body}");
}

#[tokio::test]
async fn without_redis_the_commands_say_why_they_cannot_run() {
    let yaml = "tiers: {basic: {}}\nmodels: [{name: m, backends: [{name: b, kind: mock}]}]\n";
    for args in [
        &["keys", "create", "--tier", "basic"][..],
        &["keys", "list"],
        &["keys", "revoke", "x"],
        &["revoke", "--jti", "j", "--until", "2099-01-01T00:00:00Z"],
    ] {
        let (ok, _, stderr) = run_cli(yaml, args, &[]).await;
        assert!(!ok, "{args:?}");
        assert!(stderr.contains("`redis`"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_runtime_keys_own_limits_replace_its_tiers() {
    let redis = RedisServer::spawn().await;
    let yaml = yaml(&redis.url());
    let gateway = RunningBinary::start_with_env(&yaml, &ENV).await;
    let (ok, stdout, stderr) = run_cli(
        &yaml,
        &[
            "keys",
            "create",
            "--tier",
            "pro",
            "--requests-per-minute",
            "1",
        ],
        &ENV,
    )
    .await;
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    until_all(&[&gateway], &key, 200).await;
    let (code, body) = status(&gateway, &key).await;
    assert_eq!(code, 429, "one request a minute: {body}");

    let (ok, _, stderr) = run_cli(
        &yaml,
        &[
            "keys",
            "create",
            "--tier",
            "pro",
            "--requests-per-minute",
            "0",
        ],
        &ENV,
    )
    .await;
    assert!(!ok && stderr.contains("requests_per_minute"), "{stderr}");
}

#[tokio::test]
async fn with_deny_every_credential_is_refused_once_redis_cannot_be_read() {
    let mut redis = RedisServer::spawn().await;
    let yaml = yaml(&redis.url()).replace("on_error: local", "on_error: deny");
    let gateway = RunningBinary::start_with_env(&yaml, &ENV).await;
    let now = sluicegate::auth::unix_now();
    // No `jti`: nothing to look up, and still refused when revocations cannot be read.
    let claims =
        json!({"iss": "idp", "aud": "sluicegate", "sub": "user-3", "iat": now, "exp": now + 600});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("signs");
    until_all(&[&gateway], &token, 200).await;
    redis.kill().await;
    within(ms(8_000), "the credential check to refuse", async {
        loop {
            // The limiter may refuse first; the credential check follows within seconds.
            let (code, body) = status(&gateway, &token).await;
            if body.contains("credentials_unavailable") {
                assert_eq!(code, 503);
                return;
            }
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await;
}
