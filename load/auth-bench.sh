#!/usr/bin/env bash
# What JWT authentication costs against an API key: one gateway (in-process limits) accepting
# both, driven in alternating rounds with the API key, an RS256 token and an ES256 token
# (64 clients, short unpaced streams; each client reuses its token, as SDKs do, so after the
# first request a token is found among the verified ones instead of being verified again).
#
#   load/auth-bench.sh [ROUNDS] [SECONDS_PER_ROUND]     (default 3 rounds of 10 s)
source "$(dirname "$0")/rounds.sh"
key=sk-sluicegate-dev
key_sha=$($bin hash-key "$key")
mint=target/release/sluicegate-mint
rs256=$($mint --alg RS256 --jwks "$work/jwks.json" --kid rsa-bench)
es256=$($mint --alg ES256 --jwks "$work/jwks.json" --kid ec-bench)

$mock --port 19111 --tokens 16 --pace 0ms >/dev/null & pids+=($!)
cat > "$work/gw.yaml" <<YAML
server: {listen: "127.0.0.1:19112", max_concurrent_requests: 100000}
log: {format: json, level: warn}
tiers: {bench: {requests_per_minute: 100000000, tokens_per_minute: 100000000000, concurrent_streams: 100000}}
api_keys: [{id: bench, sha256: $key_sha, tier: bench}]
models: [{name: mock-gpt, backends: [{name: up, kind: openai, base_url: "http://127.0.0.1:19111/v1"}]}]
auth: {jwt: {issuer: bench-idp, audience: sluicegate, algorithms: [RS256, ES256], jwks_file: "$work/jwks.json", default_tier: bench}}
YAML
$bin --config "$work/gw.yaml" >/dev/null & pids+=($!)
for p in 19111 19112; do wait_port $p; done
gw=${pids[1]}
rounds "${1:-3}" "${2:-10}" "api-key 19112 $gw $key" "jwt-rs256 19112 $gw $rs256" "jwt-es256 19112 $gw $es256"
