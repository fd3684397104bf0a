//! Limits shared through a real Redis: every `limits` scenario, exactness across two gateway
//! instances, and Redis failing and coming back.

use std::time::Duration;

use tokio::time::Instant;

use crate::limits::*;
use crate::support::*;

#[tokio::test]
async fn shared_exactly_the_requests_per_minute_pass_under_a_parallel_burst() {
    exactly_the_requests_per_minute_pass_under_a_parallel_burst(Some(&RedisServer::spawn().await))
        .await;
}

#[tokio::test]
async fn shared_successful_responses_carry_consistent_rate_limit_headers() {
    successful_responses_carry_consistent_rate_limit_headers(Some(&RedisServer::spawn().await))
        .await;
}

#[tokio::test]
async fn shared_tokens_are_reserved_then_refunded_when_the_answer_was_short() {
    tokens_are_reserved_then_refunded_when_the_answer_was_short(Some(&RedisServer::spawn().await))
        .await;
}

#[tokio::test]
async fn shared_a_request_that_can_never_fit_says_not_to_retry() {
    a_request_that_can_never_fit_says_not_to_retry(Some(&RedisServer::spawn().await)).await;
}

#[tokio::test]
async fn shared_concurrent_streams_are_leases_released_when_a_stream_ends_or_is_abandoned() {
    concurrent_streams_are_leases_released_when_a_stream_ends_or_is_abandoned(Some(
        &RedisServer::spawn().await,
    ))
    .await;
}

#[tokio::test]
async fn shared_a_refused_request_takes_nothing_from_any_limit() {
    a_refused_request_takes_nothing_from_any_limit(Some(&RedisServer::spawn().await)).await;
}

async fn two_replicas(config: &GatewayConfig) -> (TestGateway, TestGateway) {
    (
        TestGateway::start(config).await,
        TestGateway::start(config).await,
    )
}

/// Fires `n` requests spread over `gateways` at once; returns how many were admitted.
async fn admitted_across(gateways: &[&TestGateway], n: usize) -> usize {
    let body = chat_body(false);
    let bases: Vec<String> = gateways.iter().map(|g| g.url("")).collect();
    let requests = (0..n).map(|i| post_chat(&bases[i % bases.len()], KEY, &body));
    let responses = futures_util::future::join_all(requests).await;
    for response in &responses {
        assert!(
            matches!(response.status().as_u16(), 200 | 429),
            "only 200 or 429: {}",
            response.status()
        );
    }
    responses.iter().filter(|r| r.status() == 200).count()
}

#[tokio::test]
async fn two_instances_sharing_redis_admit_exactly_the_limit() {
    let redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(1, "1ms")
        .tier("{requests_per_minute: 10}")
        .redis(&redis.url());
    let (a, b) = two_replicas(&config).await;
    assert_eq!(
        admitted_across(&[&a, &b], 50).await,
        10,
        "exactly 10 of 50 across two replicas"
    );
}

#[tokio::test]
async fn redis_dying_falls_back_without_errors_and_shared_limits_resume_after_restart() {
    let mut redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(1, "1ms")
        .tier("{requests_per_minute: 5}")
        .redis(&redis.url());
    let (a, b) = two_replicas(&config).await;
    assert_eq!(
        admitted_across(&[&a, &b], 20).await,
        5,
        "shared while Redis is up"
    );

    redis.kill().await;
    // On the in-process fallback each replica enforces the limit on its own; nothing fails and
    // no request waits much longer than the 50 ms Redis timeout.
    for gateway in [&a, &b] {
        for _ in 0..8 {
            let started = Instant::now();
            let response = post_chat(&gateway.url(""), OTHER_KEY, &other_model(false)).await;
            assert!(
                matches!(response.status().as_u16(), 200 | 429),
                "no 5xx while Redis is down"
            );
            assert!(
                started.elapsed() < ms(500),
                "bounded by the Redis timeout: {:?}",
                started.elapsed()
            );
        }
    }
    let ready: serde_json::Value = http()
        .get(a.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (ready["status"].as_str(), ready["redis"].as_str()),
        (Some("ready"), Some("down"))
    );

    // A fresh, empty Redis on the same port: the scripts are gone (NOSCRIPT) and get reloaded.
    redis.start().await;
    for gateway in [&a, &b] {
        within(
            Duration::from_secs(15),
            "the gateway to use Redis again",
            async {
                loop {
                    post_chat(&gateway.url(""), OTHER_KEY, &other_model(false)).await;
                    let ready: serde_json::Value = http()
                        .get(gateway.url("/readyz"))
                        .send()
                        .await
                        .expect("readyz")
                        .json()
                        .await
                        .expect("json");
                    if ready["redis"] == "up" {
                        return;
                    }
                    tokio::time::sleep(ms(200)).await;
                }
            },
        )
        .await;
    }
    assert_eq!(
        admitted_across(&[&a, &b], 20).await,
        5,
        "shared again after the restart"
    );
}

#[tokio::test]
async fn a_lease_held_by_a_killed_replica_expires_on_its_own() {
    let redis = RedisServer::spawn().await;
    let upstream = MockUpstream::stream(1000).pace(ms(50)).start().await;
    // total_timeout 1s: a lease outlives its request by at most 1 s + 5 s.
    let config = GatewayConfig::openai(&upstream.base_url())
        .upstream("{first_byte_timeout: 1s, idle_timeout: 1s, total_timeout: 1s}")
        .tier("{concurrent_streams: 1}")
        .redis(&redis.url());
    let yaml = config
        .clone()
        .server("{listen: '127.0.0.1:0'}")
        .yaml()
        .replace("level: warn", "level: info");
    let mut doomed = crate::support::binary::RunningBinary::start(&yaml).await;
    let response = post_chat(&doomed.base(), KEY, &chat_body(true)).await;
    assert_eq!(response.status(), 200);
    doomed
        .child
        .kill()
        .await
        .expect("kill -9 the replica mid-stream");
    let killed = Instant::now();

    let survivor = TestGateway::start(&config).await;
    let (status, _) = error_of(post_chat(&survivor.url(""), KEY, &chat_body(true)).await).await;
    assert_eq!(status, 429, "the dead replica's lease still counts");
    let orphan = "the orphaned lease to expire";
    until_admitted(
        &survivor.url(""),
        KEY,
        &chat_body(true),
        Duration::from_secs(12),
        orphan,
    )
    .await;
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "not before the lease ttl: {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn on_error_allow_and_deny_decide_while_redis_is_unreachable() {
    let closed_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let unreachable = format!("redis://127.0.0.1:{closed_port}");
    let base = GatewayConfig::mock(1, "1ms").tier("{requests_per_minute: 1}");

    let mut allow = base.clone().redis(&unreachable);
    allow.redis = Some(format!(
        "{{url: '{unreachable}', timeout: 50ms, on_error: allow}}"
    ));
    let gateway = TestGateway::start(&allow).await;
    for _ in 0..3 {
        let response = post_chat(&gateway.url(""), KEY, &chat_body(false)).await;
        assert_eq!(response.status(), 200, "allow admits without limits");
        assert!(
            response
                .headers()
                .get("x-ratelimit-limit-requests")
                .is_none(),
            "nothing was metered"
        );
    }

    let mut deny = base;
    deny.redis = Some(format!(
        "{{url: '{unreachable}', timeout: 50ms, on_error: deny}}"
    ));
    let gateway = TestGateway::start(&deny).await;
    let (status, body) = error_of(post_chat(&gateway.url(""), KEY, &chat_body(false)).await).await;
    // Revocations cannot be checked either, and that is the first check a request meets.
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("credentials_unavailable"))
    );
    let ready = http()
        .get(gateway.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503, "deny mode is not ready without Redis");
}

/// Streams ending together on two replicas are settled in a few coalesced script calls, and
/// every lease is still released exactly once: the streams cap admits a full second round.
#[tokio::test]
async fn settlements_are_coalesced_and_every_lease_is_released() {
    let redis = RedisServer::spawn().await;
    let config = GatewayConfig::mock(4, "20ms")
        .tier("{concurrent_streams: 64, tokens_per_minute: 100000000}")
        .redis(&redis.url());
    let (a, b) = two_replicas(&config).await;
    let body = chat_body(true);
    for round in 1..=2 {
        let requests = (0..64).map(|i| {
            let base = if i % 2 == 0 { a.url("") } else { b.url("") };
            let body = &body;
            async move {
                let response = post_chat(&base, KEY, body).await;
                (response.status(), response.text().await.unwrap_or_default())
            }
        });
        for (status, text) in futures_util::future::join_all(requests).await {
            assert_eq!(
                status, 200,
                "round {round}: all 64 fit the cap of 64: {text}"
            );
            assert!(text.ends_with("data: [DONE]\n\n"), "round {round}: {text}");
        }
        within(
            Duration::from_secs(3),
            "every lease to be released",
            async {
                while integer(
                    redis
                        .command(&["EXISTS", "sluicegate:{full}:inflight"])
                        .await,
                ) != 0
                {
                    tokio::time::sleep(ms(10)).await;
                }
            },
        )
        .await;
    }
    let mut calls = 0.0;
    for gateway in [&a, &b] {
        let text = metrics_text(&gateway.url("")).await;
        calls += metric_sample(
            &text,
            "sluicegate_redis_calls_total",
            &[("script", "settle"), ("result", "ok")],
        )
        .expect("settlement calls counted");
    }
    assert!(
        calls <= 64.0,
        "128 settlements in at most one call per two (streams ending together share one), not {calls}"
    );
}
