//! The shipped deployment files, checked offline (no Docker or cluster here): they parse, they
//! say what the runbook relies on, and every configuration they carry passes `check-config`.

use serde_norway::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).expect("valid YAML"))
        .collect()
}

/// The duration text of a config (`30s`) in seconds.
fn seconds(value: &Value) -> u64 {
    humantime::parse_duration(value.as_str().expect("a duration"))
        .expect("a duration")
        .as_secs()
}

const REDIS_ENV: [(&str, &str); 1] = [("SLUICEGATE_REDIS_URL", "redis://127.0.0.1:6379")];

#[tokio::test]
async fn the_example_and_kubernetes_configs_pass_check_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let k8s = documents(&read("deploy/k8s/sluicegate.yaml"));
    let configmap = k8s
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    for (name, yaml) in [
        ("example", read("deploy/sluicegate.example.yaml")),
        (
            "configmap",
            configmap["data"]["config.yaml"]
                .as_str()
                .expect("config.yaml")
                .to_owned(),
        ),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &yaml).expect("write");
        let output = tokio::process::Command::new(crate::support::binary::BINARY)
            .args(["check-config", path.to_str().expect("utf-8")])
            .envs(REDIS_ENV)
            .output()
            .await
            .expect("runs");
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_kubernetes_manifests_hold_what_a_rolling_restart_needs() {
    let k8s = documents(&read("deploy/k8s/sluicegate.yaml"));
    let kind = |name: &str| {
        k8s.iter()
            .find(|d| d["kind"] == name)
            .unwrap_or_else(|| panic!("a {name}"))
    };
    for name in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        kind(name);
    }
    let config: Value = serde_norway::from_str(
        kind("ConfigMap")["data"]["config.yaml"]
            .as_str()
            .expect("config"),
    )
    .expect("config YAML");
    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop pause");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    // The pause, the drain, the final-event window (5 s) and the trace flush (2 s).
    assert!(
        grace > pre_stop + seconds(&config["server"]["shutdown_grace"]) + 5 + 2,
        "the pod's grace covers the drain and the pause"
    );
    assert_eq!(
        container["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        kind("Secret")["metadata"]["name"],
        "the Redis URL comes from the Secret"
    );
    assert_eq!(config["redis"]["url_env"], container["env"][0]["name"]);
    assert_eq!(
        kind("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert!(kind("HorizontalPodAutoscaler")["spec"]["minReplicas"].as_u64() >= Some(2));
    assert_eq!(kind("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
}

#[test]
fn compose_runs_the_verified_topology() {
    let compose = &documents(&read("deploy/compose.yaml"))[0];
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "redis",
        "mock-upstream",
        "sluicegate-1",
        "sluicegate-2",
        "sluicegate-3",
        "nginx",
        "prometheus",
    ] {
        assert!(
            services.contains_key(Value::from(name)),
            "compose has {name}"
        );
    }
    let example: Value =
        serde_norway::from_str(&read("deploy/sluicegate.example.yaml")).expect("example YAML");
    let replica = &compose["services"]["sluicegate-2"];
    let stop = seconds(&replica["stop_grace_period"]);
    assert!(stop > seconds(&example["server"]["shutdown_grace"]));
    assert!(replica["environment"]["SLUICEGATE_REDIS_URL"].is_string());
    let nginx = compose["services"]["nginx"]["volumes"][0]
        .as_str()
        .expect("a volume");
    assert!(nginx.starts_with("./nginx.conf:"), "the shipped nginx.conf");
    let prometheus = read("deploy/prometheus.yml");
    for replica in [
        "sluicegate-1:9090",
        "sluicegate-2:9090",
        "sluicegate-3:9090",
    ] {
        assert!(prometheus.contains(replica), "Prometheus scrapes {replica}");
    }
    // The nginx.conf names the same three replicas deploy/verify.sh rewrites.
    let conf = read("deploy/nginx.conf");
    for replica in [
        "sluicegate-1:8080",
        "sluicegate-2:8080",
        "sluicegate-3:8080",
    ] {
        assert!(conf.contains(replica));
    }
}

#[test]
fn the_image_is_multi_stage_non_root_and_checks_its_health() {
    let dockerfile = read("deploy/Dockerfile");
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2
    );
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the distroless nonroot user"
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("\"probe\""), "the binary probes itself");
    let ignore = read(".dockerignore");
    let first_rule = ignore
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty());
    assert_eq!(
        first_rule,
        Some("*"),
        "everything is ignored but what is named"
    );
}

/// The OpenAPI description parses and names every model route the gateway serves.
#[test]
fn the_openapi_document_parses_and_names_the_served_routes() {
    let document = documents(&read("proto/openapi.yaml")).remove(0);
    let paths = document["paths"].as_mapping().expect("paths");
    for route in [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    ] {
        assert!(
            paths.contains_key(route),
            "proto/openapi.yaml lacks {route}"
        );
    }
}
