//! Bad input always gets a clear OpenAI-shaped 4xx: never a 500, a hang, or a dropped socket.

use std::time::Duration;

use crate::support::*;

struct Row {
    name: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    param: Option<&'static str>,
}

fn row(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    param: Option<&'static str>,
) -> Row {
    Row {
        name,
        content_type: "application/json",
        body: body.into(),
        status,
        code,
        param,
    }
}

fn rows() -> Vec<Row> {
    let m = r#""messages":[{"role":"user","content":"hi"}]"#;
    let deep = format!(
        r#"{{"model":"test-model",{m},"x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    vec![
        row(
            "malformed JSON",
            r#"{"model": "test-model", "messages": ["#,
            400,
            "invalid_json",
            None,
        ),
        row(
            "non-UTF-8 body",
            b"{\"model\":\"test-\xff\xfe\"}".to_vec(),
            400,
            "invalid_json",
            None,
        ),
        row(
            "JSON that is not an object",
            "[1, 2]",
            400,
            "invalid_type",
            None,
        ),
        Row {
            content_type: "text/plain",
            ..row(
                "wrong content-type",
                format!(r#"{{"model":"test-model",{m}}}"#),
                400,
                "unsupported_content_type",
                None,
            )
        },
        row(
            "missing messages",
            r#"{"model":"test-model"}"#,
            400,
            "missing_required_parameter",
            Some("messages"),
        ),
        row(
            "empty messages",
            r#"{"model":"test-model","messages":[]}"#,
            400,
            "invalid_value",
            Some("messages"),
        ),
        row(
            "message without role",
            r#"{"model":"test-model","messages":[{"content":"x"}]}"#,
            400,
            "missing_required_parameter",
            Some("messages[0].role"),
        ),
        row(
            "unknown role",
            r#"{"model":"test-model","messages":[{"role":"pirate","content":"x"}]}"#,
            400,
            "invalid_value",
            Some("messages[0].role"),
        ),
        row(
            "stream not a boolean",
            format!(r#"{{"model":"test-model",{m},"stream":"true"}}"#),
            400,
            "invalid_type",
            Some("stream"),
        ),
        row(
            "negative max_tokens",
            format!(r#"{{"model":"test-model",{m},"max_tokens":-5}}"#),
            400,
            "integer_below_min_value",
            Some("max_tokens"),
        ),
        row(
            "max_tokens of u64::MAX",
            format!(r#"{{"model":"test-model",{m},"max_tokens":18446744073709551615}}"#),
            400,
            "integer_above_max_value",
            Some("max_tokens"),
        ),
        row(
            "n above 128",
            format!(r#"{{"model":"test-model",{m},"n":129}}"#),
            400,
            "integer_above_max_value",
            Some("n"),
        ),
        row(
            "temperature as a string",
            format!(r#"{{"model":"test-model",{m},"temperature":"0.7"}}"#),
            400,
            "invalid_type",
            Some("temperature"),
        ),
        row(
            "a number among the stop strings",
            format!(r#"{{"model":"test-model",{m},"stop":["\n",7]}}"#),
            400,
            "invalid_type",
            Some("stop[1]"),
        ),
        row(
            "tools as an object",
            format!(r#"{{"model":"test-model",{m},"tools":{{"type":"function"}}}}"#),
            400,
            "invalid_type",
            Some("tools"),
        ),
        row(
            "response_format without a type",
            format!(r#"{{"model":"test-model",{m},"response_format":{{}}}}"#),
            400,
            "missing_required_parameter",
            Some("response_format.type"),
        ),
        row(
            "a seed that is not an integer",
            format!(r#"{{"model":"test-model",{m},"seed":"42"}}"#),
            400,
            "invalid_type",
            Some("seed"),
        ),
        row(
            "fractional max_tokens",
            format!(r#"{{"model":"test-model",{m},"max_tokens":2.5}}"#),
            400,
            "invalid_type",
            Some("max_tokens"),
        ),
        row(
            "n > 1 on a backend that cannot",
            format!(r#"{{"model":"test-model",{m},"n":2}}"#),
            400,
            "unsupported_value",
            Some("n"),
        ),
        row(
            "missing model",
            format!(r#"{{{m}}}"#),
            400,
            "missing_required_parameter",
            Some("model"),
        ),
        row(
            "unknown model",
            format!(r#"{{"model":"gpt-nope",{m}}}"#),
            404,
            "model_not_found",
            Some("model"),
        ),
        row(
            "lone UTF-16 surrogate",
            format!(r#"{{"model":"test-model",{m},"user":"\ud800"}}"#),
            400,
            "invalid_json",
            None,
        ),
        row("10k-deep nesting", deep, 400, "invalid_json", None),
        row(
            "body over the cap",
            format!(
                r#"{{"model":"test-model",{m},"pad":"{}"}}"#,
                "x".repeat(100_000)
            ),
            413,
            "request_too_large",
            None,
        ),
    ]
}

fn gateway_config() -> GatewayConfig {
    GatewayConfig::mock(1, "1ms").server("{max_body_bytes: 65536}")
}

#[tokio::test]
async fn each_bad_body_gets_its_status_type_code_and_param() {
    let gateway = TestGateway::start(&gateway_config()).await;
    for row in rows() {
        let response = http()
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("content-type", row.content_type)
            .body(row.body)
            .send()
            .await
            .expect("gateway answers");
        let (status, body) = error_of(response).await;
        let error = &body["error"];
        assert_eq!(status, row.status, "{}: {body}", row.name);
        assert_eq!(
            error["code"].as_str(),
            Some(row.code),
            "{}: {body}",
            row.name
        );
        assert_eq!(error["param"].as_str(), row.param, "{}: {body}", row.name);
        assert_eq!(error["type"], "invalid_request_error", "{}", row.name);
    }
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let gateway = TestGateway::start(&gateway_config()).await;
    let (status, body) = error_of(
        http()
            .get(gateway.url("/v1/images/generations"))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_url"))
    );
    let response = http()
        .get(gateway.url("/v1/embeddings"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 405, "embeddings are POSTed");
    let response = http()
        .get(gateway.url("/v1/chat/completions"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        response.headers()["allow"],
        "POST",
        "what the route answers"
    );
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let gateway = TestGateway::start(&gateway_config()).await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let answer = raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "got {answer:?}");
}

#[tokio::test]
async fn chunked_body_over_the_cap_is_refused_without_reading_to_its_end() {
    let gateway = TestGateway::start(&gateway_config()).await;
    // No Content-Length, a chunked body past the 64 KiB cap, and no terminating chunk: the
    // gateway must answer once the cap is crossed instead of waiting for the end.
    let chunk = "x".repeat(32 * 1024);
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..4 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    let answer = within(
        ms(5000),
        "the 413",
        raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(3)),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "got {answer:?}");
    assert!(
        answer.contains(r#""code":"request_too_large""#),
        "OpenAI error body: {answer:?}"
    );
}

#[tokio::test]
async fn a_lying_content_length_never_reads_past_the_cap() {
    let gateway = TestGateway::start(&gateway_config()).await;
    // A declared length over the cap is refused before the body is read at all.
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 999999999\r\n\r\n{{"
    );
    let answer = raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "got {answer:?}");
    // A short declared length beside a chunked body: the chunked framing wins, and reading
    // still stops at the cap.
    let chunk = "x".repeat(32 * 1024);
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..3 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    let answer = raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "got {answer:?}");
}

#[tokio::test]
async fn a_body_that_never_finishes_arriving_is_408() {
    let gateway =
        TestGateway::start(&GatewayConfig::mock(1, "1ms").server("{body_read_timeout: 500ms}"))
            .await;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\""
    );
    let answer = raw_exchange(gateway.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    assert!(
        answer.contains(r#""code":"request_timeout""#),
        "OpenAI error body: {answer:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_cap_sent_in_one_go_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gateway = TestGateway::start(&gateway_config()).await;
    // 8 MiB against a 64 KiB cap, sent whole before reading, as many HTTP clients do: the
    // gateway answers at once and reads on, discarding, so the whole send succeeds and the
    // client reads its 413 instead of meeting a broken pipe.
    for declared in [true, false] {
        let size = 8 * 1024 * 1024;
        let framing = if declared {
            format!("content-length: {size}")
        } else {
            "transfer-encoding: chunked".to_owned()
        };
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\n{framing}\r\n\r\n"
        )
        .into_bytes();
        if declared {
            request.extend(std::iter::repeat_n(b' ', size));
        } else {
            let chunk = [
                format!("{:x}\r\n", 1 << 20).into_bytes(),
                vec![b' '; 1 << 20],
                b"\r\n".to_vec(),
            ]
            .concat();
            request.extend(chunk.repeat(size >> 20));
            request.extend_from_slice(b"0\r\n\r\n");
        }
        let socket = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connect");
        let (mut reader, mut writer) = socket.into_split();
        let sent = within(
            ms(10_000),
            "the whole body to be sent",
            writer.write_all(&request),
        )
        .await;
        assert!(
            sent.is_ok(),
            "declared {declared}: the send completes: {sent:?}"
        );
        let mut answer = vec![0u8; 512];
        let n = within(ms(5_000), "the answer", reader.read(&mut answer))
            .await
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "declared {declared}: {answer:?}"
        );
    }
}
