//! Client helpers: OpenAI-shaped requests through reqwest, raw bytes through TCP.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn chat_body(stream: bool) -> Value {
    json!({"model": "test-model", "messages": [{"role": "user", "content": "hello"}], "stream": stream})
}

/// A chat body for `other-model`, the one model `OTHER_KEY` may use.
pub fn other_model(stream: bool) -> Value {
    let mut body = chat_body(stream);
    body["model"] = "other-model".into();
    body
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client builds")
}

pub async fn post_chat(base: &str, key: &str, body: &Value) -> reqwest::Response {
    post_json(base, "/v1/chat/completions", key, body).await
}

/// Posts `body` to `path` (such as `/v1/embeddings`) with `key`.
pub async fn post_json(base: &str, path: &str, key: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// Posts a chat request over HTTP/2 without upgrade (h2c prior knowledge).
pub async fn post_chat_h2(base: &str, body: &Value) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client builds");
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(super::KEY)
        .json(body)
        .send()
        .await
        .expect("h2c answer");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    response
}

/// Posts a chat request and reads the whole answer as text.
pub async fn chat_text(base: &str, key: &str, body: &Value) -> String {
    post_chat(base, key, body)
        .await
        .text()
        .await
        .expect("the answer's body")
}

/// The status and parsed JSON error body of a response.
pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(
        body["error"]["message"].is_string(),
        "error has a message: {body}"
    );
    assert!(
        body["error"]["type"].is_string(),
        "error has a type: {body}"
    );
    let error = body["error"].as_object().expect("error is an object");
    assert!(
        error.contains_key("param") && error.contains_key("code"),
        "param and code are present: {body}"
    );
    (status, body)
}

/// Splits an SSE body into its events (without the blank-line terminators).
pub fn events(body: &str) -> Vec<&str> {
    body.split_terminator("\n\n").collect()
}

/// The JSON of every `data:` event that is not `[DONE]`.
pub fn data_json(body: &str) -> Vec<Value> {
    events(body)
        .into_iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("each data event is JSON"))
        .collect()
}

/// The concatenated `delta.content` of a streamed answer.
pub fn content_of(body: &str) -> String {
    data_json(body)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Writes `request` on a fresh connection and reads until the gateway closes it or `limit`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("write request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, socket.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `body` until the gateway answers 200 (a limit freed up), failing after `limit`.
pub async fn until_admitted(
    base: &str,
    key: &str,
    body: &Value,
    limit: Duration,
    what: &str,
) -> reqwest::Response {
    super::within(limit, what, async {
        loop {
            let response = post_chat(base, key, body).await;
            if response.status() == 200 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A base URL where nothing listens: connections are refused.
pub fn refusing_url() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}/v1")
}

/// A free loopback port (for addresses a config file must name before the process starts).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

/// The Prometheus exposition of the gateway at `base`.
pub async fn metrics_text(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the sample `name{labels}` whose label set is exactly `labels`.
pub fn metric_sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let mut found: Vec<(String, String)> = label_text
            .split(',')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        found.sort();
        wanted.sort();
        (found == wanted).then(|| value.trim().parse().ok())?
    })
}

/// The key's usage totals of today from the gateway at `base` (`/usage`), once they count
/// `requests` requests (settlement happens after the response, so a test waits for it).
pub async fn usage_totals(base: &str, key_id: &str, requests: u64) -> Value {
    crate::support::within(Duration::from_secs(3), "the usage totals", async {
        loop {
            let usage: Value = http()
                .get(format!("{base}/usage?key={key_id}"))
                .send()
                .await
                .expect("answer")
                .json()
                .await
                .expect("JSON");
            if usage["keys"][0]["requests"] == requests {
                return usage["keys"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
