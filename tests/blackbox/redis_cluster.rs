//! The shared-state scenarios through `redis-cluster://` on a real three-master Redis Cluster:
//! exact limits across two gateways, stream leases, runtime keys and revocation, usage totals
//! (a script whose keys spanned slots would fail with CROSSSLOT and the gateways would fall
//! back to their own counts, which these exact checks would see), then a slot moved under
//! traffic (`ASK`, `MOVED`) and a master killed, both survived per `redis.on_error`.

use crate::support::binary::{RunningBinary, run_cli};
use crate::support::redis_cluster::RedisCluster;
use crate::support::*;

fn remaining(response: &reqwest::Response) -> u64 {
    // `x-ratelimit-remaining-requests` of an admitted request.
    response.headers()["x-ratelimit-remaining-requests"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn limits_and_leases_hold_exactly_across_two_gateways_on_a_cluster() {
    let cluster = RedisCluster::spawn().await;
    let config = GatewayConfig::mock(2, "0ms")
        .tier("{requests_per_minute: 5}")
        .redis(&cluster.url());
    let a = TestGateway::start(&config).await;
    let b = TestGateway::start(&config).await;
    let mut admitted = 0;
    for i in 0..12 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let answer = post_chat(&gateway.url(""), KEY, &chat_body(true)).await;
        match answer.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
        answer.text().await.expect("body");
    }
    assert_eq!(admitted, 5, "5 of 12 across both gateways");

    // One stream at a time for the key, whichever gateway it reaches.
    let config = GatewayConfig::mock(10, "100ms")
        .tier("{concurrent_streams: 1}")
        .redis(&cluster.url());
    let a = TestGateway::start(&config).await;
    let b = TestGateway::start(&config).await;
    let held = post_chat(&a.url(""), KEY, &chat_body(true)).await;
    assert_eq!(held.status(), 200);
    let refused = post_chat(&b.url(""), KEY, &chat_body(true)).await;
    assert_eq!(refused.status(), 429, "the lease is shared");
    held.text().await.expect("the held stream ends");
    until_admitted(
        &b.url(""),
        KEY,
        &chat_body(true),
        std::time::Duration::from_secs(5),
        "the settled lease to free the slot",
    )
    .await;
}

#[tokio::test]
async fn runtime_keys_revocation_and_usage_work_on_a_cluster() {
    let cluster = RedisCluster::spawn().await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\ntiers: {{basic: {{}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 2, pace: 0ms}}}}]}}]\n\
         redis: {{url: '{}', on_error: local}}\n",
        cluster.url()
    );
    let gateway = RunningBinary::start(&yaml).await;
    let (ok, stdout, stderr) = run_cli(
        &yaml,
        &["keys", "create", "--tier", "basic", "--id", "on-cluster"],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    within(ms(5_000), "the created key to work", async {
        while post_chat(&gateway.base(), &key, &chat_body(true))
            .await
            .status()
            != 200
        {
            tokio::time::sleep(ms(50)).await;
        }
    })
    .await;
    let usage = within(ms(10_000), "the usage totals", async {
        loop {
            let (ok, stdout, stderr) =
                run_cli(&yaml, &["usage", "--key", "on-cluster", "--json"], &[]).await;
            assert!(ok, "{stderr}");
            let usage: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
            if usage["keys"][0]["requests"].as_u64().unwrap_or(0) >= 1 {
                return usage;
            }
            tokio::time::sleep(ms(200)).await;
        }
    })
    .await;
    assert_eq!(usage["keys"][0]["key_id"], "on-cluster");

    let (ok, _, stderr) = run_cli(&yaml, &["keys", "revoke", "on-cluster"], &[]).await;
    assert!(ok, "{stderr}");
    within(ms(5_000), "the revoked key to be refused", async {
        while post_chat(&gateway.base(), &key, &chat_body(true))
            .await
            .status()
            != 401
        {
            tokio::time::sleep(ms(50)).await;
        }
    })
    .await;
    let metrics = metrics_text(&gateway.base()).await;
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sluicegate_redis_calls_total") && !l.contains("result=\"ok\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        errors.is_empty(),
        "no script failed on the cluster: {errors:?}"
    );
}

#[tokio::test]
async fn a_slot_moved_under_traffic_and_a_failed_master_are_survived() {
    let mut cluster = RedisCluster::spawn().await;
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0'}}\nlog: {{format: json, level: info}}\n\
         tiers: {{basic: {{requests_per_minute: 10}}}}\n\
         models: [{{name: test-model, backends: [{{name: mock, kind: mock, mock: {{tokens: 2, pace: 0ms}}}}]}}]\n\
         api_keys: [{{id: full, sha256: {}, tier: basic}}]\n\
         redis: {{url: '{}', timeout: 200ms, on_error: local}}\n",
        sluicegate::auth::hash_key(KEY),
        cluster.url()
    );
    let gateway = RunningBinary::start(&yaml).await;
    let admitted_through_redis = async || {
        let text = metrics_text(&gateway.base()).await;
        text.lines()
            .find(|l| l.starts_with(r#"sluicegate_redis_calls_total{script="admit",result="ok"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let send = async || {
        let answer = post_chat(&gateway.base(), KEY, &chat_body(true)).await;
        assert_eq!(answer.status(), 200, "served throughout");
        let left = remaining(&answer);
        answer.text().await.expect("body");
        left
    };
    let mut last = 0;
    for _ in 0..5 {
        last = send().await;
    }
    assert_eq!(admitted_through_redis().await, 5.0);
    // The key's slot moves to another master, keys and all. Admissions that meet the redirect
    // before the gateway has learned the new owner are decided per `on_error: local` (an
    // admission is never sent twice, so it does not follow the redirect itself); then counting
    // goes on in Redis, from where it was.
    let moved_to = cluster.move_slot("{full}").await;
    assert_eq!(cluster.owner_of("{full}").await.1.0, moved_to);
    let through_redis = within(ms(10_000), "admissions through the new master", async {
        loop {
            let before = admitted_through_redis().await;
            let left = send().await;
            if admitted_through_redis().await > before {
                return left;
            }
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await;
    // Five of ten were used; keys lost in the move would start a fresh bucket at nine.
    assert!(
        through_redis <= last,
        "the count moved with the slot: {through_redis} left after {last}"
    );

    // Its new master dies: `on_error: local` keeps answering.
    cluster.kill(moved_to).await;
    within(
        ms(10_000),
        "requests to be served without the master",
        async {
            for _ in 0..5 {
                send().await;
            }
        },
    )
    .await;
}
