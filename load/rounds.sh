# Shared by the A/B benchmarks (sourced): builds the release binaries, waits for ports and runs
# alternating rounds of the load generator against several gateway variants, printing one JSON
# line per round and each variant's means (streams/s, gateway CPU per stream).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -j2 -p sluicegate -p sluicegate-load >&2
bin=target/release/sluicegate
load=target/release/sluicegate-load
# The benchmarks' upstream: cheap enough that a direct run measures the load generator.
mock=target/release/sluicegate-fast-mock
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# CPU (user + system) the process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# rounds ROUNDS SECONDS VARIANT... where each VARIANT is "label port pid bearer".
rounds() {
  local n=$1 secs=$2; shift 2
  local variants=("$@")
  local ticks_per_s; ticks_per_s=$(getconf CLK_TCK)
  for variant in "${variants[@]}"; do
    set -- $variant
    $load --quiet --url "http://127.0.0.1:$2/v1" --key "$4" --concurrency 64 --duration 2s --label warmup >/dev/null
  done
  for round in $(seq "$n"); do
    for variant in "${variants[@]}"; do
      set -- $variant
      local before used line streams
      before=$(cpu_ticks "$3")
      line=$($load --quiet --url "http://127.0.0.1:$2/v1" --key "$4" --concurrency 64 --duration "${secs}s" --label "$1")
      used=$(( $(cpu_ticks "$3") - before ))
      streams=$(echo "$line" | sed -n 's/.*"streams":\([0-9]*\).*/\1/p')
      echo "{\"round\":$round,\"label\":\"$1\",\"streams\":$streams,\"streams_per_s\":$(awk "BEGIN{printf \"%.0f\", $streams/$secs}"),\"cpu_us_per_stream\":$(awk "BEGIN{printf \"%.1f\", $used/$ticks_per_s*1e6/$streams}")}"
    done
  done | tee "$work/rounds"
  for variant in "${variants[@]}"; do
    set -- $variant
    grep "\"label\":\"$1\"" "$work/rounds" | awk -v l="$1" -F'[:,}]' '
      { for (i = 1; i < NF; i++) { if ($i ~ /streams_per_s/) s += $(i+1); if ($i ~ /cpu_us_per_stream/) c += $(i+1) } n++ }
      END { printf "{\"label\":\"%s-mean\",\"streams_per_s\":%.0f,\"cpu_us_per_stream\":%.1f}\n", l, s/n, c/n }'
  done
}
