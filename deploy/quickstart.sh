#!/usr/bin/env bash
# fogmesh quickstart on one machine: a master, three fog agents with the
# public IPs 127.0.0.2-4 (camera, fog and cloud-side nodes of the example),
# and the face-detection pipeline from adts/face-detection.yaml.
#
#   bash deploy/quickstart.sh        # start everything, submit the app
#   bash deploy/quickstart.sh stop   # remove exactly what the quickstart made
#
# Everything it makes is marked: processes have pid files in $WORK,
# containers carry the label fogmesh.quickstart=$WORK, host folders live in
# $WORK/volumes. `stop` removes those and $WORK itself (CA key, admin token).
# Ports: API 7400/tcp, agents 7401/udp, metrics broker 8883/tcp
# (FOGMESH_QS_API_PORT, FOGMESH_QS_QUIC_PORT, FOGMESH_QS_MQTT_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${FOGMESH_QUICKSTART_DIR:-/tmp/fogmesh-quickstart}
API_PORT=${FOGMESH_QS_API_PORT:-7400}
QUIC_PORT=${FOGMESH_QS_QUIC_PORT:-7401}
MQTT_PORT=${FOGMESH_QS_MQTT_PORT:-8883}
BIN=target/debug
NODES=(camera:127.0.0.2 fog:127.0.0.3 cloud:127.0.0.4)
MARKER="fogmesh.quickstart=$WORK"

stop() {
    if [ -d "$WORK" ]; then
        for pidfile in "$WORK"/*.pid; do
            [ -e "$pidfile" ] || continue
            pid=$(cat "$pidfile")
            # Only our own processes: the pid must still run a fogmesh binary.
            if grep -qs fogmesh "/proc/$pid/cmdline"; then kill "$pid" 2>/dev/null || true; fi
        done
        sleep 0.5
    fi
    ids=$(docker ps -aq --filter "label=$MARKER" 2>/dev/null || true)
    [ -n "$ids" ] && docker rm -f -v $ids >/dev/null
    rm -rf "$WORK"
    echo "quickstart stopped: processes, containers labelled $MARKER and $WORK removed"
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

echo "== host: Docker and the demo images"
bash deploy/setup-host.sh
echo "== build"
cargo build --bins --quiet
bash deploy/images/build.sh

stop >/dev/null 2>&1 || true
mkdir -p "$WORK/volumes"

echo "== master"
"$BIN/fogmesh-master" init --data-dir "$WORK/master" --api "127.0.0.1:$API_PORT"
"$BIN/fogmesh-master" serve --data-dir "$WORK/master" --api "127.0.0.1:$API_PORT" --quic "127.0.0.1:$QUIC_PORT" \
    --mqtt-listen "127.0.0.1:$MQTT_PORT" >"$WORK/master.log" 2>&1 &
echo $! >"$WORK/master.pid"
export FOGMESH_CONFIG="$WORK/master/client.conf"
for _ in $(seq 1 50); do "$BIN/fogmesh" node list >/dev/null 2>&1 && break; sleep 0.2; done

echo "== fog agents"
for n in "${NODES[@]}"; do
    name=${n%%:*} ip=${n##*:}
    # The token goes through the environment, never the command line.
    FOGMESH_JOIN_TOKEN=$("$BIN/fogmesh" token create --ttl 10m 2>/dev/null) \
        "$BIN/fogmesh-agent" run --master "127.0.0.1:$QUIC_PORT" \
        --data-dir "$WORK/agent-$name" --name "$name" --public-ip "$ip" --label "role=$name" \
        --container-label "$MARKER" >"$WORK/agent-$name.log" 2>&1 &
    echo $! >"$WORK/agent-$name.pid"
done
for _ in $(seq 1 50); do
    [ "$("$BIN/fogmesh" node list | grep -c ' ready ')" -ge 3 ] && break
    sleep 0.2
done
"$BIN/fogmesh" node list

echo "== submit adts/face-detection.yaml"
"$BIN/fogmesh" app submit adts/face-detection.yaml --timeout 120s \
    --param "frames_dir=$WORK/volumes/frames" --param "results_dir=$WORK/volumes/results"
"$BIN/fogmesh" app show face-detection
echo
docker ps --filter "label=$MARKER" --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'

echo "== metrics (agents -> MQTT -> master)"
for _ in $(seq 1 100); do
    [ "$("$BIN/fogmesh" metrics query 'count by (node) (container_memory_usage_bytes)' 2>/dev/null | grep -c 'node=')" -ge 3 ] && break
    sleep 0.2
done
"$BIN/fogmesh" metrics query 'sum by (node) (container_memory_usage_bytes)'
cat <<MSG

fogmesh is running. Try:
  export FOGMESH_CONFIG=$WORK/master/client.conf
  $BIN/fogmesh node list
  $BIN/fogmesh app show face-detection
  $BIN/fogmesh metrics query 'sum by (node) (rate(container_cpu_usage_seconds_total[1m]))'
  $BIN/fogmesh metrics query 'node_load1' --range 10m
Logs are in $WORK. Remove everything with: bash deploy/quickstart.sh stop
MSG
