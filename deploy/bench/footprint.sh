#!/usr/bin/env bash
# The edge agent's footprint: RSS and CPU while idle and while running 20
# containers, and the binary's size. For scale, the same run measures
# dockerd and one containerd shim (every container has one) on this machine.
# The agent is the `edge` profile build (size-optimised, LTO, hot code first), as
# shipped to fog devices; the RSS is split into its own memory (anonymous)
# and its program's pages (file-backed, shared with the page cache).
#
#   bash deploy/bench/footprint.sh [WINDOW_SECONDS]   (default 60 s per phase)
#
# Prints a table; writes target/bench/footprint.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
WINDOW=${1:-60}
WORK=${FOGMESH_BENCH_DIR:-/tmp/fogmesh-bench-footprint}
API=127.0.0.1:7620 QUIC=127.0.0.1:7621 MQTT=127.0.0.1:7622 IP=127.0.0.72
BIN=target/release
OUT=target/bench
IMAGE=fogmesh/busybox:test

bash deploy/setup-host.sh >/dev/null
bash deploy/images/build.sh busybox >/dev/null
echo "== build (release)"
cargo build --release --locked --quiet -p fogmesh-master -p fogmesh-agent
echo "== build the agent (profile edge; a few minutes the first time)"
cargo build --profile edge --locked --quiet -p fogmesh-agent
AGENT_BIN=target/edge/fogmesh-agent

source deploy/bench/lib.sh
cleanup() {
    bench_stop_all
    bench_remove_containers footprint
}
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"

bench_master_init "$API"
bench_master_start "$API" "$QUIC" --mqtt-listen "$MQTT"
bench_agent_start "$AGENT_BIN" "$QUIC" footprint "$IP"
AGENT=$(cat "$WORK/agent.pid")

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
anon_kib() { awk '$1 == "Anonymous:" {print $2}' "/proc/$1/smaps_rollup"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
declare -A r
# measure PHASE: RSS at the end and CPU over WINDOW seconds.
measure() {
    local t0 t1
    t0=$(ticks $AGENT)
    sleep "$WINDOW"
    t1=$(ticks $AGENT)
    r[$1_rss_kib]=$(kib $AGENT VmRSS)
    r[$1_anon_kib]=$(anon_kib $AGENT)
    r[$1_cpu_pct]=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v w="$WINDOW" 'BEGIN {printf "%.2f", 100 * d / hz / w}')
}

echo "== idle: settling, then ${WINDOW} s"
sleep 20 # past the first metrics collection and its queue
measure idle

echo "== 20 containers"
bench_edge_adt "$WORK/app.yaml" "$IP" 20 "$IMAGE"
"$BIN/fogmesh" app submit "$WORK/app.yaml" --name footprint --timeout 120s >/dev/null
sleep 20
measure busy
r[peak_kib]=$(kib $AGENT VmHWM)
r[binary_bytes]=$(stat -c %s "$AGENT_BIN")
r[release_binary_bytes]=$(stat -c %s "$BIN/fogmesh-agent")
# How much of edge-agent/hot-code.order this build still has (names change
# with dependency versions and the toolchain).
r[hot_code_listed]=$(sort -u edge-agent/hot-code.order | wc -l)
r[hot_code_found]=$(nm --defined-only "$AGENT_BIN" | awk '{print $3}' | sort -u | comm -12 - <(sort -u edge-agent/hot-code.order) | wc -l)
dockerd_pid=$(pgrep -xo dockerd)
r[dockerd_kib]=$(kib "$dockerd_pid" VmRSS)
shim_pid=$(pgrep -fo containerd-shim || true)
r[shim_kib]=$([ -n "$shim_pid" ] && kib "$shim_pid" VmRSS || echo 0)
"$BIN/fogmesh" app delete footprint >/dev/null

mb() { awk -v k="$1" 'BEGIN {printf "%.1f MB", k * 1024 / 1e6}'; }
{
    echo "| | RSS | of which its own (anonymous) | CPU (one core = 100 %) |"
    echo "| --- | --- | --- | --- |"
    echo "| fogmesh-agent idle | $(mb "${r[idle_rss_kib]}") | $(mb "${r[idle_anon_kib]}") | ${r[idle_cpu_pct]} % |"
    echo "| fogmesh-agent with 20 containers | $(mb "${r[busy_rss_kib]}") (peak $(mb "${r[peak_kib]}")) | $(mb "${r[busy_anon_kib]}") | ${r[busy_cpu_pct]} % |"
    echo "| dockerd, same moment | $(mb "${r[dockerd_kib]}") | | |"
    echo "| one containerd shim (one per container) | $(mb "${r[shim_kib]}") | | |"
    echo
    echo "fogmesh-agent binary (edge profile): $(awk -v b="${r[binary_bytes]}" 'BEGIN {printf "%.1f", b / 1e6}') MB (release: $(awk -v b="${r[release_binary_bytes]}" 'BEGIN {printf "%.1f", b / 1e6}') MB); CPU over ${WINDOW} s per phase"
    echo "hot-code order: ${r[hot_code_found]} of ${r[hot_code_listed]} listed functions are in this build"
    if [ $((r[hot_code_found] * 10)) -lt $((r[hot_code_listed] * 9)) ]; then
        echo "  (under 90 %: the list is stale; bash deploy/bench/hot-code.sh remakes it)"
    fi
} >&2
{
    echo "{"
    first=1
    for k in "${!r[@]}"; do
        [ $first = 1 ] || echo ","
        first=0
        printf '  "%s": %s' "$k" "${r[$k]}"
    done
    echo
    echo "}"
} >"$OUT/footprint.json"
echo "written to $OUT/footprint.json" >&2
