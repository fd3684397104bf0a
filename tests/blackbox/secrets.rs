//! No secret reaches a place an operator or a client can read: `Debug` output of the running
//! gateway, error bodies, logs.

use sluicegate::Gateway;

#[test]
fn the_backend_key_is_not_printable_through_debug() {
    // Any variable that is surely set will do as the "key".
    let key = std::env::var("PATH").expect("PATH is set");
    assert!(key.len() > 4, "a recognisable value");
    let yaml = "models: [{name: m, backends: [\
        {name: plain, kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: PATH}, \
        {name: tls, kind: openai, base_url: 'https://127.0.0.1:9/v1', api_key_env: PATH}]}]\n\
        redis: {url: 'redis://:hunter2-redis-password@127.0.0.1:9'}";
    let config = sluicegate::config::parse(yaml).expect("valid config");
    let gateway = Gateway::build(&config).expect("gateway builds");
    // Also as the numbers of a byte list, which is how `Vec<u8>` prints.
    let as_bytes = format!("{:?}", key.as_bytes());
    let as_bytes = as_bytes.trim_matches(['[', ']']);
    for printed in [format!("{config:?}"), format!("{gateway:?}")] {
        assert!(!printed.contains(&key), "the key leaked into Debug output");
        assert!(
            !printed.contains(as_bytes),
            "the key's bytes leaked into Debug output"
        );
        assert!(
            !printed.contains("Bearer"),
            "an authorization header leaked: {printed}"
        );
    }
}
