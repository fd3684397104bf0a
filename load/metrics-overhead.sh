#!/usr/bin/env bash
# What the metrics exporter costs: one build, two gateways on the same mock upstream (key auth
# and in-process limits on both), one with `telemetry.metrics: true` and one with it off, driven
# in alternating rounds by the same load generator (64 clients, short unpaced streams). Prints
# one JSON line per round and the mean streams/s and gateway CPU per stream of each.
#
#   load/metrics-overhead.sh [ROUNDS] [SECONDS_PER_ROUND]     (default 4 rounds of 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
secs=${2:-10}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -j2 -p sluicegate -p sluicegate-load >&2
bin=target/release/sluicegate
load=target/release/sluicegate-load
key=sk-sluicegate-dev
key_sha=$($bin hash-key "$key")
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# CPU seconds (user + system) the process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

$bin mock-upstream --port 19101 --tokens 16 --pace 0ms >/dev/null & pids+=($!)
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
declare -A pid_of=([19102]=${pids[1]} [19103]=${pids[2]})
ticks_per_s=$(getconf CLK_TCK)

$load --url http://127.0.0.1:19102/v1 --key $key --concurrency 64 --duration 2s --label warmup >/dev/null
$load --url http://127.0.0.1:19103/v1 --key $key --concurrency 64 --duration 2s --label warmup >/dev/null
for round in $(seq "$rounds"); do
  for variant in "19102 metrics-on" "19103 metrics-off"; do
    set -- $variant
    before=$(cpu_ticks "${pid_of[$1]}")
    line=$($load --url "http://127.0.0.1:$1/v1" --key $key --concurrency 64 --duration "${secs}s" --label "$2")
    used=$(( $(cpu_ticks "${pid_of[$1]}") - before ))
    streams=$(echo "$line" | sed -n 's/.*"streams":\([0-9]*\).*/\1/p')
    echo "{\"round\":$round,\"label\":\"$2\",\"streams\":$streams,\"streams_per_s\":$(awk "BEGIN{printf \"%.0f\", $streams/$secs}"),\"cpu_us_per_stream\":$(awk "BEGIN{printf \"%.1f\", $used/$ticks_per_s*1e6/$streams}")}"
  done
done | tee "$work/rounds"
for label in metrics-on metrics-off; do
  grep "\"$label\"" "$work/rounds" | awk -v l=$label -F'[:,}]' '
    { for (i = 1; i < NF; i++) { if ($i ~ /streams_per_s/) s += $(i+1); if ($i ~ /cpu_us_per_stream/) c += $(i+1) } n++ }
    END { printf "{\"label\":\"%s-mean\",\"streams_per_s\":%.0f,\"cpu_us_per_stream\":%.1f}\n", l, s/n, c/n }'
done
