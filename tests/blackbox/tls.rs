//! TLS to backends, over real TLS on loopback: a private CA trusted through `tls.ca_file`, a
//! server name given apart from the URL, a client certificate when the backend demands one; a
//! wrong CA, an expired certificate or a wrong name is a 502 `upstream_unavailable` whose log
//! line says why, and counts against the backend's breaker.

use crate::support::binary::{RunningBinary, run_cli};
use crate::support::tls::{Pki, acceptor};
use crate::support::*;

/// `test-model` on one TLS backend at `base_url` with the `tls` settings (a YAML flow map).
fn tls_backend(base_url: &str, tls: &str) -> GatewayConfig {
    GatewayConfig::with_backend(format!(
        "{{name: tls, kind: openai, base_url: '{base_url}', upstream_model: upstream-model, tls: {tls}}}"
    ))
}

/// A TLS upstream streaming "Hello over TLS" on keep-alive connections, for the PKI's
/// `localhost` certificate (`cert`, `key`), demanding a client certificate when `client_ca`.
async fn tls_upstream(
    cert: &std::path::PathBuf,
    key: &std::path::PathBuf,
    client_ca: Option<&std::path::PathBuf>,
) -> MockUpstream {
    MockUpstream::stream_tokens(&["Hello", " over", " TLS"])
        .keep_alive()
        .tls(acceptor(cert, key, client_ca))
        .start()
        .await
}

#[tokio::test]
async fn a_backend_behind_a_private_ca_answers_over_tls() {
    let pki = Pki::new();
    let upstream = tls_upstream(&pki.server_cert, &pki.server_key, None).await;
    let tls = format!("{{ca_file: '{}'}}", pki.ca.display());
    let gateway = TestGateway::start(&tls_backend(&upstream.base_url(), &tls)).await;
    for _ in 0..2 {
        let streamed = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
        assert_eq!(content_of(&streamed), "Hello over TLS");
        assert!(streamed.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        upstream.connections().len(),
        1,
        "the second request reused the pooled TLS connection"
    );
}

#[tokio::test]
async fn the_certificate_may_be_checked_against_a_name_other_than_the_urls() {
    let pki = Pki::new();
    let upstream = tls_upstream(&pki.server_cert, &pki.server_key, None).await;
    // The URL names the address; the certificate carries only `localhost`.
    let url = format!("https://127.0.0.1:{}/v1", upstream.addr.port());
    let named = format!(
        "{{ca_file: '{}', server_name: localhost}}",
        pki.ca.display()
    );
    let gateway = TestGateway::start(&tls_backend(&url, &named)).await;
    let streamed = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(content_of(&streamed), "Hello over TLS");
}

#[tokio::test]
async fn a_backend_that_demands_a_client_certificate_gets_one_when_configured() {
    let pki = Pki::new();
    let upstream = tls_upstream(&pki.server_cert, &pki.server_key, Some(&pki.client_ca)).await;
    let url = upstream.base_url();
    let without = format!("{{ca_file: '{}'}}", pki.ca.display());
    let gateway = TestGateway::start(&tls_backend(&url, &without)).await;
    let (status, error) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{error}"
    );
    assert_eq!(upstream.requests().len(), 0);

    let with = format!(
        "{{ca_file: '{}', client_cert_file: '{}', client_key_file: '{}'}}",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let gateway = TestGateway::start(&tls_backend(&url, &with)).await;
    let streamed = chat_text(&gateway.url(""), KEY, &chat_body(true)).await;
    assert_eq!(content_of(&streamed), "Hello over TLS");
}

#[tokio::test]
async fn untrusted_expired_or_misnamed_certificates_are_502s_that_say_why_and_open_the_breaker() {
    let pki = Pki::new();
    let good = tls_upstream(&pki.server_cert, &pki.server_key, None).await;
    let expired = tls_upstream(&pki.expired_cert, &pki.expired_key, None).await;
    let ca = pki.ca.display();
    let cases = [
        // Trusting a CA that signed nothing here.
        (
            good.base_url(),
            format!("{{ca_file: '{}'}}", pki.other_ca.display()),
            "UnknownIssuer",
        ),
        (
            expired.base_url(),
            format!("{{ca_file: '{ca}'}}"),
            "certificate expired",
        ),
        (
            good.base_url(),
            format!("{{ca_file: '{ca}', server_name: backend.internal}}"),
            "certificate not valid for name",
        ),
    ];
    for (url, tls, why) in cases {
        let yaml = format!(
            "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json}}\ntiers: {{basic: {{}}}}\n\
             upstream: {{breaker: {{consecutive_failures: 3}}}}\n\
             models: [{{name: test-model, backends: [{{name: tls, kind: openai, base_url: '{url}', tls: {tls}}}]}}]\n\
             api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
            sluicegate::auth::hash_key(KEY)
        );
        let gateway = RunningBinary::start(&yaml).await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            let (status, error) =
                error_of(post_chat(&gateway.base(), KEY, &chat_body(false)).await).await;
            codes.push((status, error["error"]["code"].as_str().map(str::to_owned)));
        }
        let failed = (502, Some("upstream_unavailable".to_owned()));
        assert_eq!(
            codes[..3],
            [failed.clone(), failed.clone(), failed],
            "{why}"
        );
        assert_eq!(
            codes[3],
            (503, Some("no_usable_backend".to_owned())),
            "{why}: three TLS failures opened the breaker"
        );
        let logs = gateway.logs().join("\n");
        assert!(
            logs.contains("TLS handshake with the backend failed") && logs.contains(why),
            "the log says why ({why}):\n{logs}"
        );
    }
    assert_eq!(good.requests().len() + expired.requests().len(), 0);
}

#[tokio::test]
async fn check_config_reads_and_checks_the_tls_files() {
    let pki = Pki::new();
    let rows = [
        (
            "{ca_file: /nonexistent/ca.pem}".to_owned(),
            "models[0].backends[0].tls.ca_file: cannot read",
        ),
        (
            format!("{{ca_file: '{}'}}", pki.server_key.display()),
            "models[0].backends[0].tls.ca_file:",
        ),
        (
            format!("{{client_cert_file: '{}'}}", pki.client_cert.display()),
            "models[0].backends[0].tls.client_key_file: required with client_cert_file",
        ),
        (
            format!(
                "{{client_cert_file: '{}', client_key_file: '{}'}}",
                pki.client_cert.display(),
                pki.ca.display()
            ),
            "models[0].backends[0].tls.client_key_file:",
        ),
        (
            "{server_name: 'not a name'}".to_owned(),
            "models[0].backends[0].tls.server_name: not a DNS name",
        ),
        // PEM whose DER is not a certificate: found when the backend is built, as at start.
        (
            format!("{{ca_file: '{}'}}", pki.garbage_pem().display()),
            "tls.ca_file",
        ),
    ];
    for (tls, expected) in rows {
        let yaml = format!(
            "models: [{{name: m, backends: [{{name: b, kind: openai, base_url: 'https://backend.internal/v1', tls: {tls}}}]}}]\n"
        );
        let (ok, stderr) = check_config(&yaml).await;
        assert!(!ok, "{tls} is refused");
        assert!(stderr.contains(expected), "{tls}: {stderr}");
    }
    let yaml = "models: [{name: m, backends: [{name: b, kind: openai, base_url: 'http://backend.internal/v1', tls: {server_name: x}}]}]\n";
    let (ok, stderr) = check_config(yaml).await;
    assert!(
        !ok && stderr.contains("tls: only for an https:// base_url"),
        "{stderr}"
    );
}

/// `sluicegate check-config FILE` with `yaml` in FILE: (success, stderr).
async fn check_config(yaml: &str) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("write config");
    let path = file.path().to_str().expect("UTF-8 path");
    let (ok, _, stderr) = run_cli("{}", &["check-config", path], &[]).await;
    (ok, stderr)
}
