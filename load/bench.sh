#!/usr/bin/env bash
# Benchmarks sluicegate against a direct connection to the upstream and against nginx as a
# pure SSE proxy, all in one run on this machine, all on loopback. Prints one JSON line per
# measurement and a summary with the ratios quoted in the README.
#
#   load/bench.sh [SECONDS_PER_RUN]     (default 10; needs nginx: apt-get install nginx-light)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

command -v nginx >/dev/null || { echo "nginx is needed: apt-get install nginx-light" >&2; exit 1; }
cargo build --release -j2 -p sluicegate -p sluicegate-load >&2
bin=target/release/sluicegate
load=target/release/sluicegate-load
# The benchmarks' upstream: cheap enough that a direct run measures the load generator.
mock=target/release/sluicegate-fast-mock
key=sk-sluicegate-dev
key_sha=$($bin hash-key "$key")

start_mock() { # port tokens pace
  $mock --port "$1" --tokens "$2" --pace "$3" >/dev/null & pids+=($!)
}
start_gateway() { # port upstream_port [tier yaml] [extra yaml]
  cat > "$work/gw-$1.yaml" <<YAML
server: {listen: "127.0.0.1:$1", max_concurrent_requests: 100000}
log: {format: json, level: warn}
tiers: {bench: ${3:-"{}"}}
api_keys: [{id: bench, sha256: $key_sha, tier: bench}]
models: [{name: mock-gpt, backends: [{name: up, kind: openai, base_url: "http://127.0.0.1:$2/v1"}]}]
${4:-}
YAML
  $bin --config "$work/gw-$1.yaml" >/dev/null & pids+=($!)
}
start_nginx() { # port upstream_port
  mkdir -p "$work/nginx-$1"
  cat > "$work/nginx-$1/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx-$1/nginx.pid;
error_log $work/nginx-$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$2; keepalive 256; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
  nginx -p "$work/nginx-$1" -c "$work/nginx-$1/nginx.conf" -g 'daemon off;' & pids+=($!)
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }

# Short streams, no pacing: per-request overhead and throughput.
start_mock 19001 16 0ms; start_gateway 19002 19001; start_nginx 19003 19001
for p in 19001 19002 19003; do wait_port $p; done
gateway_pid=${pids[1]}
run() { $load --quiet --url "http://127.0.0.1:$1/v1" --key $key --concurrency "$2" --duration "${secs}s" --label "$3"; }
run 19001 1 warmup >/dev/null
results=()
for target in "19001 direct" "19003 nginx" "19002 sluicegate"; do
  set -- $target
  results+=("$(run "$1" 1 "$2-c1")")
  results+=("$(run "$1" 64 "$2-c64")")
done
printf '%s\n' "${results[@]}"

# Admission cost: limits off, in-process, and shared through Redis (limits high enough that
# nothing is refused), and the Redis round trips each request made.
command -v redis-server >/dev/null || { echo "redis-server is needed: apt-get install redis-server" >&2; exit 1; }
redis-server --port 19020 --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
limits='{requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent_streams: 100000}'
start_gateway 19021 19001 "$limits"
start_gateway 19022 19001 "$limits" "redis: {url: 'redis://127.0.0.1:19020'}"
for p in 19020 19021 19022; do wait_port $p; done
evalsha_calls() { redis-cli -p 19020 info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p' | tr -d '\r'; }
run 19021 1 limits-local-c1
run 19021 64 limits-local-c64
streams_of() { echo "$1" | sed -n 's/.*"streams":\([0-9]*\).*/\1/p'; }
before=$(evalsha_calls); before=${before:-0}
c1=$(run 19022 1 limits-redis-c1); echo "$c1"
c64=$(run 19022 64 limits-redis-c64); echo "$c64"
sleep 1 # settlements run just after each response
calls=$(( $(evalsha_calls) - before ))
requests=$(( $(streams_of "$c1") + $(streams_of "$c64") ))
echo "{\"label\":\"redis-round-trips\",\"requests\":$requests,\"evalsha_calls\":$calls,\"per_request\":$(awk "BEGIN{printf \"%.3f\", $calls/$requests}")}"

# Memory per open stream: 256 slow streams held open through each proxy.
start_mock 19011 400 50ms; start_gateway 19012 19011; start_nginx 19013 19011
for p in 19011 19012 19013; do wait_port $p; done
# Ready means the tokenizers are loaded: the memory before is measured with them in.
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:19012/readyz && break; sleep 0.1; done
gateway_slow_pid=${pids[-2]}
nginx_master=${pids[-1]}
mem_of() { # port pid-getter label
  local before after
  before=$($2)
  $load --quiet --url "http://127.0.0.1:$1/v1" --key $key --concurrency 256 --duration 1s --label "$3" >/dev/null &
  local loader=$!
  sleep 8
  after=$($2)
  wait $loader || true
  echo "{\"label\":\"$3\",\"streams\":256,\"rss_kib_before\":$before,\"rss_kib_during\":$after,\"kib_per_stream\":$(( (after - before) / 256 ))}"
}
gw_rss() { rss_kib "$gateway_slow_pid"; }
nginx_rss() { local t=0; for p in $(pgrep -P "$nginx_master") "$nginx_master"; do t=$((t + $(rss_kib "$p"))); done; echo $t; }
mem_of 19012 gw_rss sluicegate-memory
mem_of 19013 nginx_rss nginx-memory
