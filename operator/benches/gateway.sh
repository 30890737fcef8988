#!/usr/bin/env bash
# The latency `overseer gateway` adds to an MCP tools/call over loopback (BENCHMARKS.md, issue 7).
#
#   cargo build --release -p operator --bin overseer --bin gateway-loadgen
#   operator/benches/gateway.sh [SESSIONS] [SECONDS] [RATE]
#
# Starts gateway-loadgen's minimal MCP upstream and `overseer gateway` deciding every call
# in-process (one Allow rule; the audit log on, hash-chained to a file), both on CPU 0 (so a call
# crosses between the CPUs twice whether it goes to the upstream directly or through the gateway),
# then measures tools/call with SESSIONS sessions from the load generator on CPU 1, each once
# against the upstream directly, once through `gateway-loadgen proxy` (a bare proxy hop on the
# gateway's CPU with the gateway's HTTP stack and nothing else: the floor of a hop on this host)
# and once through the gateway. UPSTREAM_CPU, GATEWAY_CPU and LOADGEN_CPU override the
# placement; OVERSEER another overseer binary (to compare two builds).
#   1. open loop at RATE calls/s in all (default 2000): latency at that load, each call timed
#      from when it was due — the difference of the percentiles is what the gateway adds;
#   2. closed loop (every session back to back): throughput.
# Prints one JSON line per run (p50/p90/p99/p99.9/max in µs, calls/s).
set -euo pipefail
sessions=${1:-16}
seconds=${2:-20}
rate=${3:-2000}
upstream_cpu=${UPSTREAM_CPU:-0}
gateway_cpu=${GATEWAY_CPU:-0}
loadgen_cpu=${LOADGEN_CPU:-1}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release
overseer=${OVERSEER:-$bin/overseer}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/policies"
cat >"$work/policies/bench.yaml" <<'YAML'
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: bench, namespace: default}
spec:
  mode: Enforce
  subjects:
    agentIds: ["bench-agent"]
  tools:
    - {name: echo, tools: ["echo"], effect: Allow, reason: "benchmark"}
YAML
cat >"$work/keys.yaml" <<'YAML'
keys:
  - {name: bench-agent, role: agent, agent: bench-agent, key: "bench-agent-key-0123456789"}
  - {name: approver, role: approver, key: "bench-approver-key-0123456789"}
YAML
cat >"$work/gateway.yaml" <<'YAML'
agentNamespace: default
upstreams:
  - name: bench
    url: http://127.0.0.1:3300/mcp
YAML

wait_port() {
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

taskset -c "$upstream_cpu" "$bin/gateway-loadgen" upstream --listen 127.0.0.1:3300 &
pids+=($!)
RUST_LOG=warn taskset -c "$gateway_cpu" "$overseer" gateway --config "$work/gateway.yaml" \
  --api-keys "$work/keys.yaml" --policies "$work/policies" --listen 127.0.0.1:8090 \
  --decision-listen 127.0.0.1:8092 --audit-file "$work/audit.jsonl" \
  --state-file "$work/limits.json" &
gateway=$!
pids+=($gateway)
taskset -c "$gateway_cpu" "$bin/gateway-loadgen" proxy --listen 127.0.0.1:3301 \
  --upstream http://127.0.0.1:3300/mcp &
pids+=($!)
wait_port 3300
wait_port 3301
wait_port 8090

direct=(--url http://127.0.0.1:3300/mcp)
bare_proxy=(--url http://127.0.0.1:3301/mcp)
through=(--url http://127.0.0.1:8090/mcp/bench --api-key bench-agent-key-0123456789)
for mode in "--rate $rate" ""; do
  for target in direct bare_proxy through; do
    declare -n args=$target
    echo "$target ${mode:-closed loop}:"
    # shellcheck disable=SC2086
    taskset -c "$loadgen_cpu" "$bin/gateway-loadgen" load "${args[@]}" --sessions "$sessions" \
      --seconds "$seconds" $mode
  done
done
kill -INT "$gateway"
wait "$gateway" || true
echo "audit: $("$overseer" audit verify "$work/audit.jsonl" 2>&1 | tail -n1)"
