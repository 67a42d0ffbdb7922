#!/usr/bin/env bash
# Fleet benchmark: one master (release build) and N simulated nodes in one
# `fogmesh-agent simulate` process (each its own certificate, QUIC session,
# store and, with metrics, its own signed metrics over its own MQTT session).
#
#   bash deploy/bench/fleet.sh N [--no-metrics]
#
# Measures, in one run:
#   join      time until all N nodes are ready
#   idle      master CPU % and RSS over 60 s (heartbeats every 10 s,
#             metrics every 15 s; the fleet-scale settings below)
#   fan-out   a desired-state change reaching every node (a DaemonSet on a
#             node set of all N): per-node time from submit to the node
#             storing it, p50/p99/max; then the same for an update
#   storm     kill -9 of the master with N connected, restart, time until
#             all N are ready again; master RSS after
# With FOGMESH_BENCH_PERF=1, also 30 s `perf` profiles of the idle master
# and of the restarted master during the storm.
# FOGMESH_BENCH_BROKER=mosquitto carries metrics through mosquitto (TLS,
# client certificates) instead of the master's embedded broker; it stays
# up through the storm.
# FOGMESH_BENCH_CONNECT_RATE=R starts R nodes' sessions per second.
# Prints a table and writes target/bench/fleet-N.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:?usage: fleet.sh N [--no-metrics]}
METRICS=--metrics
[ "${2:-}" = "--no-metrics" ] && METRICS=""
WORK=${FOGMESH_BENCH_DIR:-/tmp/fogmesh-bench-fleet}
API=127.0.0.1:${FOGMESH_BENCH_API_PORT:-7600}
QUIC=127.0.0.1:${FOGMESH_BENCH_QUIC_PORT:-7601}
MQTT=127.0.0.1:${FOGMESH_BENCH_MQTT_PORT:-7602}
BIN=target/release
OUT=target/bench
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true

source deploy/bench/lib.sh
trap 'bench_stop_all KILL' EXIT
# One UDP socket carries every session on each side: let it hold a burst
# (the master asks for 8 MiB, the simulator for 64 MiB; Linux caps at rmem_max).
sysctl -qw net.core.rmem_max=67108864 2>/dev/null || true

echo "== build (release)"
cargo build --release --locked --quiet -p fogmesh-master -p fogmesh-agent
bench_stop_all KILL
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
# Datagrams the kernel dropped for a full socket receive buffer, all sockets.
udp_drops() { awk '/^Udp:/ {n++; if (n == 2) print $6}' /proc/net/snmp; }
# Datagrams dropped so far at the UDP sockets of process PID (the last
# column of /proc/net/udp, matched by the sockets' inodes).
socket_drops() {
    local inodes
    inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | paste -sd' ')
    awk -v want="$inodes" 'BEGIN {n = split(want, a, " "); for (i = 1; i <= n; i++) mine[a[i]] = 1}
        NR > 1 && ($10 in mine) {sum += $NF} END {print sum + 0}' /proc/net/udp
}

BROKER=${FOGMESH_BENCH_BROKER:-embedded}
case $BROKER in
    embedded) BROKER_ARGS=(--mqtt-listen "$MQTT") ;;
    mosquitto) BROKER_ARGS=(--mqtt-url "mqtts://$MQTT") ;;
    *) echo "FOGMESH_BENCH_BROKER is embedded or mosquitto, not $BROKER" >&2; exit 2 ;;
esac

# A fleet's settings: heartbeats every 10 s, a node offline after 30 s of
# silence, QUIC sessions given up after 30 s (agents ping every 7.5 s).
FLEET_ARGS=(--heartbeat 10s --offline-after 30s --agent-timeout 30s)

start_master() { bench_master_start "$API" "$QUIC" "${BROKER_ARGS[@]}" "${FLEET_ARGS[@]}"; }

wait_ready() { bench_wait_ready "$N" "$1" 1 600; } # $1: what

# Per-node delay from $1 (ms) to the first receipt of a generation newer
# than any seen before it: "p50 p99 max count" in seconds.
fanout() {
    awk -v t0="$1" '
        $1 < t0 { seen[$2] = $3; next }
        !($2 in done) && $3 > seen[$2] + 0 { done[$2] = 1; print ($1 - t0) / 1000 }' "$WORK/received.log" |
        sort -n | awk '
        { d[++n] = $1 }
        END {
            if (n == 0) { print "- - - 0"; exit }
            p50 = int(n * 0.50); if (p50 < n * 0.50) p50++
            p99 = int(n * 0.99); if (p99 < n * 0.99) p99++
            printf "%.2f %.2f %.2f %d\n", d[p50], d[p99], d[n], n
        }'
}

echo "== master and $N simulated nodes${METRICS:+ (with metrics)}, broker: $BROKER"
bench_master_init "$API"
if [ "$BROKER" = mosquitto ]; then
    command -v mosquitto >/dev/null || apt-get install -y -qq mosquitto >/dev/null
    "$BIN/fogmesh-master" issue-cert --data-dir "$WORK/master" --name 127.0.0.1 --out-dir "$WORK/mosquitto" >/dev/null
    cat >"$WORK/mosquitto/mosquitto.conf" <<CONF
user root
listener ${MQTT##*:} ${MQTT%:*}
cafile $WORK/mosquitto/ca.pem
certfile $WORK/mosquitto/server.pem
keyfile $WORK/mosquitto/server.key
require_certificate true
use_identity_as_username true
allow_anonymous false
persistence false
CONF
    mosquitto -c "$WORK/mosquitto/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    echo $! >"$WORK/mosquitto.pid"
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/${MQTT%:*}/${MQTT##*:}") 2>/dev/null && break; sleep 0.1; done
fi
start_master
TOKEN=$("$BIN/fogmesh" token create --uses "$N" --ttl 1h 2>/dev/null)
FOGMESH_JOIN_TOKEN=$TOKEN "$BIN/fogmesh-agent" simulate --master "$QUIC" --count "$N" --data-dir "$WORK/sim" \
    --received-log "$WORK/received.log" --connect-rate "${FOGMESH_BENCH_CONNECT_RATE:-0}" --master-timeout 30s $METRICS >"$WORK/simulate.log" 2>&1 &
echo $! >"$WORK/simulate.pid"
drops0=$(udp_drops)
join_s=$(wait_ready join)
join_drops=$(( $(udp_drops) - drops0 ))
echo "  all joined and ready: $join_s s (UDP datagrams dropped by full buffers: $join_drops)" >&2

echo "== idle, 60 s"
MASTER=$(cat "$WORK/master.pid") SIM=$(cat "$WORK/simulate.pid")
sleep 10
c0=$(cpu_s "$MASTER") s0=$(cpu_s "$SIM")
[ "$BROKER" = mosquitto ] && b0=$(cpu_s "$(cat "$WORK/mosquitto.pid")")
sleep 60
broker_idle=""
if [ "$BROKER" = mosquitto ]; then
    MQ=$(cat "$WORK/mosquitto.pid")
    broker_idle=$(awk -v a="$(cpu_s "$MQ")" -v b="$b0" -v r="$(rss_mb "$MQ")" 'BEGIN {printf "mosquitto: %.1f %% CPU, %s MB", (a - b) / 60 * 100, r}')
fi
idle_cpu=$(awk -v a="$(cpu_s "$MASTER")" -v b="$c0" 'BEGIN {printf "%.1f", (a - b) / 60 * 100}')
sim_cpu=$(awk -v a="$(cpu_s "$SIM")" -v b="$s0" 'BEGIN {printf "%.1f", (a - b) / 60 * 100}')
idle_rss=$(rss_mb "$MASTER") sim_rss=$(rss_mb "$SIM")
if [ -n "${FOGMESH_BENCH_PERF:-}" ]; then
    # Where the idle master's time goes: 30 s of samples, top symbols.
    perf record -F 499 -g -p "$MASTER" -o "$WORK/perf.data" -- sleep 30 >/dev/null 2>&1
    perf report -i "$WORK/perf.data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null |
        grep -v '^#' | grep . >"$OUT/fleet-$N-idle-profile.txt" || true
    echo "  idle profile: $OUT/fleet-$N-idle-profile.txt" >&2
fi
samples=$("$BIN/fogmesh" metrics query 'count(node_load1)' 2>/dev/null | awk 'NR==2 {print $2}')
echo "  master idle: $idle_cpu % CPU, $idle_rss MB (simulator $sim_cpu % CPU, $sim_rss MB${broker_idle:+; $broker_idle}); node_load1 series: ${samples:-0}" >&2

echo "== fan-out to every node"
cat >"$WORK/fleet.yaml" <<ADT
tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  inputs:
    version: {type: string, default: "1"}
  node_templates:
    sim:
      # The simulated nodes join as members of node set "sim" (--prefix).
      type: tosca.nodes.MiCADO.EC2.Compute
      properties: {region_name: none, image_id: none, instance_type: simulated}
    probe:
      type: tosca.nodes.MiCADO.Container.Application.Docker.DaemonSet
      properties:
        image: fogmesh/busybox:test
        env: [{name: VERSION, value: {get_input: version}}]
      requirements:
        - host: sim
ADT
# A rollout that does not finish is a result too: note it and go on.
t0=$(now_ms)
submit_ok=true
"$BIN/fogmesh" app submit "$WORK/fleet.yaml" --timeout 600s >"$WORK/submit.log" 2>&1 || submit_ok=false
submit_cli_s=$(awk -v a="$(now_ms)" -v b="$t0" 'BEGIN {printf "%.2f", (a - b) / 1000}')
sleep 1
read -r sub_p50 sub_p99 sub_max sub_n <<<"$(fanout "$t0")"
echo "  submit: p50 $sub_p50 s, p99 $sub_p99 s, max $sub_max s ($sub_n nodes); CLI $submit_cli_s s, finished: $submit_ok" >&2
t0=$(now_ms)
update_ok=true
"$BIN/fogmesh" app update fleet "$WORK/fleet.yaml" --param version=2 --timeout 600s >"$WORK/update.log" 2>&1 || update_ok=false
update_cli_s=$(awk -v a="$(now_ms)" -v b="$t0" 'BEGIN {printf "%.2f", (a - b) / 1000}')
sleep 1
read -r upd_p50 upd_p99 upd_max upd_n <<<"$(fanout "$t0")"
echo "  update: p50 $upd_p50 s, p99 $upd_p99 s, max $upd_max s ($upd_n nodes); CLI $update_cli_s s, finished: $update_ok" >&2

echo "== reconnect storm: kill -9 the master, restart"
drops0=$(udp_drops)
sim_drops0=$(socket_drops "$(cat "$WORK/simulate.pid")")
bench_master_crash
start_master
if [ -n "${FOGMESH_BENCH_PERF:-}" ]; then
    # Where the restarted master's time goes while the fleet comes back.
    perf record -F 499 -g -p "$(cat "$WORK/master.pid")" -o "$WORK/perf-storm.data" -- sleep 30 >/dev/null 2>&1 &
    PERF_PID=$!
fi
storm_s=$(wait_ready reconnect)
storm_drops=$(( $(udp_drops) - drops0 ))
storm_master_drops=$(socket_drops "$(cat "$WORK/master.pid")")
storm_sim_drops=$(( $(socket_drops "$(cat "$WORK/simulate.pid")") - sim_drops0 ))
storm_p99=$(cat "$WORK/reconnect-p99")
if [ -n "${FOGMESH_BENCH_PERF:-}" ]; then
    wait "$PERF_PID" || true
    perf report -i "$WORK/perf-storm.data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null |
        grep -v '^#' | grep . >"$OUT/fleet-$N-storm-profile.txt" || true
    echo "  storm profile: $OUT/fleet-$N-storm-profile.txt" >&2
fi
MASTER=$(cat "$WORK/master.pid")
sleep 5
storm_rss=$(rss_mb "$MASTER")

cat >"$OUT/fleet-$N.json" <<JSON
{"nodes": $N, "broker": "$BROKER", "metrics": $([ -n "$METRICS" ] && echo true || echo false),
 "join_all_ready_s": $join_s,
 "idle": {"broker": "$broker_idle", "master_cpu_percent": $idle_cpu, "master_rss_mb": $idle_rss, "simulator_cpu_percent": $sim_cpu, "simulator_rss_mb": $sim_rss, "node_load1_series": "${samples:-0}"},
 "submit": {"finished": $submit_ok, "cli_s": $submit_cli_s, "p50_s": "$sub_p50", "p99_s": "$sub_p99", "max_s": "$sub_max", "nodes": $sub_n},
 "update": {"finished": $update_ok, "cli_s": $update_cli_s, "p50_s": "$upd_p50", "p99_s": "$upd_p99", "max_s": "$upd_max", "nodes": $upd_n},
 "reconnect_storm_all_ready_s": $storm_s, "reconnect_storm_99_percent_ready_s": $storm_p99, "master_rss_after_storm_mb": $storm_rss,
 "udp_drops": {"join": $join_drops, "storm": $storm_drops, "storm_at_master": $storm_master_drops, "storm_at_simulator": $storm_sim_drops}}
JSON
cat <<TABLE

fleet of $N simulated nodes${METRICS:+, metrics every 15 s}, broker $BROKER ($(nproc) cores)
  all joined and ready            $join_s s
  master idle                     $idle_cpu % CPU, $idle_rss MB RSS  (simulator: $sim_cpu % CPU, $sim_rss MB${broker_idle:+; $broker_idle})
  node metrics at the master      ${samples:-0} nodes' node_load1 series
  submit, per node                p50 $sub_p50 s, p99 $sub_p99 s, max $sub_max s ($sub_n nodes); CLI saw all running after $submit_cli_s s
  update, per node                p50 $upd_p50 s, p99 $upd_p99 s, max $upd_max s ($upd_n nodes); CLI $update_cli_s s
  master kill -9 -> all back      $storm_s s, 99 % back $storm_p99 s  (master RSS then $storm_rss MB)
  UDP datagrams dropped           $join_drops while joining, $storm_drops in the storm (full receive buffers; master $storm_master_drops, simulator $storm_sim_drops)
written to $OUT/fleet-$N.json
TABLE
