//! API keys: missing or unknown is 401, a model outside the key's list is 403.

use crate::support::*;

#[tokio::test]
async fn missing_malformed_and_unknown_keys_are_401() {
    let gateway = TestGateway::start(&GatewayConfig::mock(1, "1ms")).await;
    let url = gateway.url("/v1/chat/completions");
    let cases = [
        ("no header", None),
        ("basic scheme", Some("Basic dXNlcjpwYXNz")),
        ("empty bearer", Some("Bearer ")),
        ("unknown key", Some("Bearer sk-not-a-key")),
    ];
    for (name, header) in cases {
        let mut request = http().post(&url).json(&chat_body(false));
        if let Some(value) = header {
            request = request.header("authorization", value);
        }
        let (status, body) = error_of(request.send().await.expect("answer")).await;
        assert_eq!(status, 401, "{name}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{name}");
        assert!(
            !body.to_string().contains("sk-not-a-key"),
            "the presented key is never echoed"
        );
    }
}

#[tokio::test]
async fn a_model_outside_the_keys_list_is_403() {
    let gateway = TestGateway::start(&GatewayConfig::mock(1, "1ms")).await;
    let (status, body) =
        error_of(post_chat(&gateway.url(""), OTHER_KEY, &chat_body(false)).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["param"], "model");

    let mut allowed = chat_body(false);
    allowed["model"] = "other-model".into();
    assert_eq!(
        post_chat(&gateway.url(""), OTHER_KEY, &allowed)
            .await
            .status(),
        200
    );
}
