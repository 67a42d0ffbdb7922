#!/usr/bin/env bash
# Regenerates edge-agent/hot-code.order: the agent's functions that run in
# normal work, which the linker puts side by side at the front of the
# program (edge-agent/build.rs). Most of an idle agent's RSS is its own code
# paged in, and the kernel maps code in 64 KiB runs around each page used:
# with the functions in use scattered over 8 MB, nearly all of it was
# resident (deploy/bench/footprint.sh).
#
#   bash deploy/bench/hot-code.sh     (about 5 minutes; needs valgrind)
#
# Two runs of the edge build under callgrind, against a real master and
# Docker: (1) join and idle, (2) restart from the store, deploy 3
# containers, one killed and replaced, an env update, an app delete. The
# functions of run 1 come first (every agent runs them), then those only
# run 2 used. Symbol names depend on the build (crate versions, profile,
# rustc), not on the code's text: regenerate after a dependency or
# toolchain change; a stale list only leaves some functions where they were.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${FOGMESH_BENCH_DIR:-/tmp/fogmesh-bench-hot-code}
API=127.0.0.1:7630 QUIC=127.0.0.1:7631 MQTT=127.0.0.1:7632 IP=127.0.0.73
BIN=target/release
AGENT_BIN=target/edge/fogmesh-agent
ORDER=edge-agent/hot-code.order
NODE=hot-code

command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
bash deploy/setup-host.sh >/dev/null
bash deploy/images/build.sh busybox >/dev/null
echo "== build (release master, edge agent)"
cargo build --release --locked --quiet -p fogmesh-master
cargo build --profile edge --locked --quiet -p fogmesh-agent

source deploy/bench/lib.sh
cleanup() {
    bench_stop_all
    bench_remove_containers $NODE
}
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK"
bench_master_init "$API"
bench_master_start "$API" "$QUIC" --mqtt-listen "$MQTT"

# agent_under_callgrind RUN: the agent under callgrind until the master
# shows it ready (valgrind makes it ~50x slower).
agent_under_callgrind() {
    FOGMESH_JOIN_TOKEN=$("$BIN/fogmesh" token create 2>/dev/null) valgrind --tool=callgrind \
        --demangle=no --compress-strings=no --dump-instr=no --callgrind-out-file="$WORK/$1.callgrind" \
        "$AGENT_BIN" run --master "$QUIC" --data-dir "$WORK/agent" --name $NODE --public-ip "$IP" \
        >"$WORK/$1.log" 2>&1 &
    echo $! >"$WORK/agent.pid"
    bench_wait_ready 1 "$1" 1 300 >/dev/null
}
stop_agent() {
    local pid
    pid=$(cat "$WORK/agent.pid")
    kill -INT "$pid"
    wait "$pid" || true
    rm -f "$WORK/agent.pid"
}
app() {
    bench_edge_adt "$WORK/app.yaml" "$IP" 3 fogmesh/busybox:test ROUND "$1"
    if [ "$1" = 1 ]; then
        "$BIN/fogmesh" app submit "$WORK/app.yaml" --name $NODE --timeout 300s >/dev/null
    else
        "$BIN/fogmesh" app update $NODE "$WORK/app.yaml" --timeout 300s >/dev/null
    fi
}

echo "== run 1: join, then idle past four metrics rounds"
agent_under_callgrind idle
sleep 70
stop_agent

echo "== run 2: restart, deploy, self-heal, update, delete"
agent_under_callgrind work
app 1
sleep 30
docker rm -f "$(docker ps -q --filter label=fogmesh.node=$NODE | head -1)" >/dev/null
sleep 30
app 2
sleep 30
"$BIN/fogmesh" app delete $NODE >/dev/null
sleep 30
stop_agent

# The functions of our binary (callgrind's `ob=` is the object, `fn=` a
# function; a `'N` suffix marks recursion depth).
functions() {
    awk '/^ob=/ {ours = ($0 ~ /fogmesh-agent$/)} /^fn=/ && ours {sub(/^fn=/, ""); sub(/'"'"'[0-9]+$/, ""); print}' "$1" |
        grep -v -e '^0x' -e '^(below main)$' | sort -u
}
functions "$WORK/idle.callgrind" >"$WORK/idle.functions"
functions "$WORK/work.callgrind" | comm -23 - "$WORK/idle.functions" >"$WORK/work.functions"
cat "$WORK/idle.functions" "$WORK/work.functions" >"$ORDER"
echo "$ORDER: $(wc -l <"$WORK/idle.functions") functions of an idle agent, then $(wc -l <"$WORK/work.functions") more of one at work"
echo "rebuild the agent (cargo build --profile edge -p fogmesh-agent) to lay them out"
