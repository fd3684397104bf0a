//! What faces browsers and proxies: CORS for configured origins only, compressed JSON answers
//! (never compressed streams), and the client address taken from `X-Forwarded-For` only when a
//! trusted proxy sent it.

use std::io::Read;

use crate::support::binary::RunningBinary;
use crate::support::*;

const ORIGIN: &str = "https://app.example.com";

fn with_cors(cors: &str) -> GatewayConfig {
    GatewayConfig::mock(3, "0ms").server(&format!("{{cors: {cors}}}"))
}

async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    http()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/chat/completions"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-lang",
        )
        .send()
        .await
        .expect("answer")
}

#[tokio::test]
async fn cors_answers_configured_origins_only_and_preflights_need_no_key() {
    let gateway =
        TestGateway::start(&with_cors(&format!("{{allowed_origins: ['{ORIGIN}']}}"))).await;
    let allowed = preflight(&gateway.url(""), ORIGIN).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let allowed_headers = headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    assert!(
        allowed_headers.contains("x-stainless-lang"),
        "{allowed_headers}"
    );
    assert!(headers.get("access-control-allow-credentials").is_none());

    let other = preflight(&gateway.url(""), "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let answer = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("origin", ORIGIN)
        .json(&chat_body(true))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.headers()["access-control-allow-origin"], ORIGIN);
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii");
    assert!(exposed.contains("x-request-id") && exposed.contains("x-ratelimit-remaining-requests"));

    // Origins are compared as browsers send them: lower-case, no default port.
    let spelled = TestGateway::start(&with_cors(
        "{allowed_origins: ['https://App.Example.com:443']}",
    ))
    .await;
    let answer = preflight(&spelled.url(""), ORIGIN).await;
    assert_eq!(answer.headers()["access-control-allow-origin"], ORIGIN);

    // Without `server.cors` no origin is allowed.
    let closed = TestGateway::start(&GatewayConfig::mock(3, "0ms")).await;
    let refused = preflight(&closed.url(""), ORIGIN).await;
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[test]
fn any_origin_with_credentials_is_refused() {
    let yaml = GatewayConfig::mock(1, "0ms")
        .server("{cors: {allowed_origins: ['*'], allow_credentials: true}}")
        .yaml();
    let error = sluicegate::config::parse(&yaml).expect_err("refused");
    assert!(
        error.to_string().contains("server.cors.allow_credentials"),
        "{error}"
    );
}

#[tokio::test]
async fn json_answers_are_compressed_when_accepted_and_streams_never_are() {
    let upstream = MockUpstream::reply(Reply::Status {
        status: 200,
        body: format!(
            r#"{{"id":"c","object":"chat.completion","created":1,"model":"upstream-model","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#,
            "compressible ".repeat(50)
        ),
        headers: vec![],
    })
    .start()
    .await;
    let gateway = TestGateway::start(&GatewayConfig::openai(&upstream.base_url())).await;
    let answer = http()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("accept-encoding", "gzip")
        .json(&chat_body(false))
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-encoding"], "gzip");
    let compressed = answer.bytes().await.expect("body");
    let mut json = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .expect("gzip");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON inside");
    assert_eq!(parsed["model"], "test-model");
    assert!(compressed.len() < json.len() / 2, "it is smaller");

    let streamed = TestGateway::start(&GatewayConfig::mock(3, "0ms")).await;
    let answer = http()
        .post(streamed.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("accept-encoding", "gzip, br")
        .json(&chat_body(true))
        .send()
        .await
        .expect("answer");
    assert!(answer.headers().get("content-encoding").is_none());
    assert!(
        answer
            .text()
            .await
            .expect("text")
            .ends_with("data: [DONE]\n\n")
    );
}

#[tokio::test]
async fn the_forwarded_client_address_is_logged_only_from_trusted_proxies() {
    let yaml = |trusted: &str| {
        format!(
            "server: {{listen: '127.0.0.1:0', trusted_proxies: [{trusted}]}}\nlog: {{format: json, level: info}}\n\
             tiers: {{basic: {{}}}}\nmodels: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 1, pace: 0ms}}}}]}}]\n\
             api_keys: [{{id: full, sha256: {}, tier: basic}}]\n",
            sluicegate::auth::hash_key(KEY)
        )
    };
    for (trusted, expected) in [
        ("'127.0.0.1'", "203.0.113.7"),
        ("'10.0.0.0/8'", "127.0.0.1"),
    ] {
        let gateway = RunningBinary::start(&yaml(trusted)).await;
        http()
            .get(format!("{}/v1/models", gateway.base()))
            .bearer_auth(KEY)
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
            .send()
            .await
            .expect("answer");
        let line = within(ms(5_000), "the access line", async {
            loop {
                if let Some(line) = gateway
                    .logs()
                    .into_iter()
                    .find(|l| l.contains("sluicegate::access"))
                {
                    return line;
                }
                tokio::time::sleep(ms(20)).await;
            }
        })
        .await;
        let access: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            access["fields"]["client_addr"], expected,
            "{trusted}: {line}"
        );
    }
}
