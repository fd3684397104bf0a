#!/usr/bin/env bash
# What the metrics exporter costs: one build, two gateways on the same mock upstream (key auth
# and in-process limits on both), one with `telemetry.metrics: true` and one with it off, driven
# in alternating rounds by the same load generator (64 clients, short unpaced streams).
#
#   load/metrics-overhead.sh [ROUNDS] [SECONDS_PER_ROUND]     (default 4 rounds of 10 s)
source "$(dirname "$0")/rounds.sh"
key=sk-sluicegate-dev
key_sha=$($bin hash-key "$key")

$mock --port 19101 --tokens 16 --pace 0ms >/dev/null & pids+=($!)
for variant in "19102 true" "19103 false"; do
  set -- $variant
  cat > "$work/gw-$1.yaml" <<YAML
server: {listen: "127.0.0.1:$1", max_concurrent_requests: 100000}
log: {format: json, level: warn}
tiers: {bench: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent_streams: 100000}}
api_keys: [{id: bench, sha256: $key_sha, tier: bench}]
models: [{name: mock-gpt, backends: [{name: up, kind: openai, base_url: "http://127.0.0.1:19101/v1"}]}]
telemetry: {metrics: $2}
YAML
  $bin --config "$work/gw-$1.yaml" >/dev/null & pids+=($!)
done
for p in 19101 19102 19103; do wait_port $p; done
rounds "${1:-4}" "${2:-10}" "metrics-on 19102 ${pids[1]} $key" "metrics-off 19103 ${pids[2]} $key"
