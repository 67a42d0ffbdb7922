#!/usr/bin/env bash
# K real agents (`fogmesh-agent run` processes, each with its own data dir,
# certificate, public IP on 127.0.0.0/8 and the local Docker engine) against
# one master, with the master's default settings:
#   ready     time from starting all K agents (joined beforehand) until the
#             master shows all K ready; master CPU and RSS idle over 30 s
#   restart   kill -9 of the master, restart at once, time until all K are
#             ready again (agents learn of the restart at their next
#             heartbeat; before the QUIC reset key they waited out their
#             idle timeout)
#
#   bash deploy/bench/agents.sh [K...]     (default: 50 200)
#
# Prints a table; writes target/bench/agents.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=("$@")
[ ${#SIZES[@]} -eq 0 ] && SIZES=(50 200)
WORK=${FOGMESH_BENCH_DIR:-/tmp/fogmesh-bench-agents}
API=127.0.0.1:7630 QUIC=127.0.0.1:7631 MQTT=127.0.0.1:7632
BIN=target/release
OUT=target/bench
ulimit -n 65536 2>/dev/null || true

bash deploy/setup-host.sh >/dev/null
echo "== build (release)"
cargo build --release --locked --quiet -p fogmesh-master -p fogmesh-agent
source deploy/bench/lib.sh
trap 'bench_stop_all KILL' EXIT

rows=() json=()
for K in "${SIZES[@]}"; do
    echo "== $K agents"
    bench_stop_all KILL
    rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
    bench_master_init "$API"
    bench_master_start "$API" "$QUIC" --mqtt-listen "$MQTT"
    TOKEN=$("$BIN/fogmesh" token create --uses "$K" --ttl 1h 2>/dev/null)
    joins=()
    for i in $(seq 1 "$K"); do
        ip=127.0.$((100 + i / 250)).$((1 + i % 250))
        FOGMESH_JOIN_TOKEN=$TOKEN "$BIN/fogmesh-agent" join --master "$QUIC" --data-dir "$WORK/agent-$i" \
            --name "bench-$i" --public-ip "$ip" >"$WORK/join-$i.log" 2>&1 &
        joins+=($!)
        # 20 at a time; only the joins, not the master started in the background.
        if [ ${#joins[@]} -ge 20 ]; then wait "${joins[@]}"; joins=(); fi
    done
    [ ${#joins[@]} -gt 0 ] && wait "${joins[@]}"
    t0=$(now_ms)
    for i in $(seq 1 "$K"); do
        "$BIN/fogmesh-agent" run --data-dir "$WORK/agent-$i" >"$WORK/agent-$i.log" 2>&1 &
        echo $! >"$WORK/agent-$i.pid"
    done
    ready_s=$(bench_wait_ready "$K" start 0.2 240)
    echo "  all $K ready: $ready_s s (since starting them)" >&2
    MASTER=$(cat "$WORK/master.pid")
    sleep 10
    c0=$(cpu_s "$MASTER")
    sleep 30
    idle_cpu=$(awk -v a="$(cpu_s "$MASTER")" -v b="$c0" 'BEGIN {printf "%.1f", (a - b) / 30 * 100}')
    idle_rss=$(rss_mb "$MASTER")
    echo "  master idle: $idle_cpu % CPU, $idle_rss MB" >&2

    bench_master_crash
    bench_master_start "$API" "$QUIC" --mqtt-listen "$MQTT"
    back_s=$(bench_wait_ready "$K" restart 0.2 240)
    echo "  master kill -9, restart -> all $K ready: $back_s s after the restart" >&2
    bench_stop_all KILL
    rows+=("$(printf '%6s  %8s s  %6s %%  %6s MB  %8s s' "$K" "$ready_s" "$idle_cpu" "$idle_rss" "$back_s")")
    json+=("{\"agents\": $K, \"all_ready_s\": $ready_s, \"master_idle_cpu_percent\": $idle_cpu, \"master_idle_rss_mb\": $idle_rss, \"restart_all_back_s\": $back_s}")
done

(IFS=,; echo "[${json[*]}]") >"$OUT/agents.json"
echo
echo "real agents against one master ($(nproc) cores; defaults: heartbeat 3 s, QUIC timeout 10 s)"
echo "agents  all ready  master idle CPU / RSS  kill -9 + restart -> all back"
printf '%s\n' "${rows[@]}"
echo "written to $OUT/agents.json"
