#!/usr/bin/env bash
# Chaos run, bounded in time and on loopback only: three mock backends behind one gateway under
# steady streaming load. A quarter into the run backend b0 is killed (kill -9); a third in, b1
# hangs (SIGSTOP: its connections stay open and silent); at 7/12 both come back. Prints the
# per-second timeline and a summary: client-visible errors, recovery time, TTFT p99 in the fault.
#
#   load/chaos.sh [SECONDS] [HEDGE_AFTER]      (default 60, no hedging; e.g. 60 200ms)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
hedge=${2:-}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release -j2 -p sluicegate -p sluicegate-load >&2
bin=target/release/sluicegate
load=target/release/sluicegate-load
key=sk-sluicegate-dev
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; exit 1; }
mock() { $bin mock-upstream --port "$1" --tokens 20 --pace 20ms >/dev/null & echo $!; }

b0=$(mock 19031); b1=$(mock 19032); b2=$(mock 19033); pids+=("$b0" "$b1" "$b2")
cat > "$work/gw.yaml" <<YAML
server: {listen: "127.0.0.1:19030", max_concurrent_requests: 100000}
log: {format: json, level: warn}
tiers: {chaos: {}}
api_keys: [{id: chaos, sha256: $($bin hash-key $key), tier: chaos}]
models:
  - name: mock-gpt
    backends:
      - {name: b0, kind: openai, base_url: "http://127.0.0.1:19031/v1"}
      - {name: b1, kind: openai, base_url: "http://127.0.0.1:19032/v1"}
      - {name: b2, kind: openai, base_url: "http://127.0.0.1:19033/v1"}
    ${hedge:+hedge_after: ${2}}
upstream:
  connect_timeout: 500ms
  first_byte_timeout: 1s
  idle_timeout: 1s
  total_timeout: 30s
  max_attempts: 3
  breaker: {consecutive_failures: 3, open_for: 1s, max_open_for: 4s}
YAML
$bin --config "$work/gw.yaml" >/dev/null & pids+=($!)
for p in 19030 19031 19032 19033; do wait_port $p; done

$load --quiet --url http://127.0.0.1:19030/v1 --key $key --concurrency 32 --duration "${secs}s" --timeline --label chaos > "$work/timeline" &
loader=$!
kill_at=$((secs / 4)); hang_at=$((secs / 3)); back_at=$((secs * 7 / 12))
sleep "$kill_at"; kill -9 "$b0"
sleep $((hang_at - kill_at)); kill -STOP "$b1"
sleep $((back_at - hang_at)); kill -CONT "$b1"; b0=$(mock 19031); pids+=("$b0")
wait "$loader"
cat "$work/timeline"

python3 - "$work/timeline" "$kill_at" "$hang_at" "$back_at" <<'PY'
import json, sys
path, kill_at, hang_at, back_at = sys.argv[1], *map(int, sys.argv[2:])
rows = [json.loads(l) for l in open(path) if '"second"' in l]
total = next(json.loads(l) for l in open(path) if '"streams_per_s"' in l)
errors = sum(r["errors"] for r in rows)
ok = sum(r["ok"] for r in rows)
def share(r, b):
    n = sum(r["backends"].values())
    return r["backends"].get(b, 0) / n if n else 0
recovered = next((r["second"] for r in rows if r["second"] >= back_at
                  and share(r, "b0") >= 0.2 and share(r, "b1") >= 0.2), None)
fault_p99 = max((r["ttft_ms_p99"] for r in rows if kill_at <= r["second"] < back_at), default=0)
calm_p99 = max((r["ttft_ms_p99"] for r in rows if r["second"] < kill_at), default=0)
print(json.dumps({
    "label": "chaos-summary", "streams_ok": ok, "streams_failed": errors,
    "error_rate": round(errors / max(1, ok + errors), 5),
    "errors_by_second": {r["second"]: r["errors"] for r in rows if r["errors"]},
    "recovery_seconds_after_return": None if recovered is None else recovered - back_at,
    "ttft_ms_p99_before_fault": calm_p99, "ttft_ms_p99_worst_second_in_fault": fault_p99,
    "overall": total,
}))
PY
