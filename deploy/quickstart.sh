#!/usr/bin/env bash
# fogmesh quickstart on one machine: a master, three fog agents with the
# public IPs 127.0.0.2-4 (camera, fog and cloud-side nodes of the example),
# and the face-detection pipeline from adts/face-detection.yaml.
#
#   bash deploy/quickstart.sh        # start everything, submit the app, wait for faces
#   bash deploy/quickstart.sh burst  # cameras send 4 frames/s for 60 s: watch the detectors scale
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

# One number from a PromQL query ("" when there is no series yet).
promql() { "$BIN/fogmesh" metrics query "$1" 2>/dev/null | awk 'NR==2 {print $2}'; }

# Cameras send faster for a while; prints the detectors, the queue and the
# frame rate every 5 s until the detectors are back to one.
burst() {
    export FOGMESH_CONFIG="$WORK/master/client.conf"
    [ -f "$FOGMESH_CONFIG" ] || { echo "the quickstart is not running: run bash deploy/quickstart.sh first" >&2; exit 1; }
    for port in 5001 5002; do
        # bash's /dev/tcp: no HTTP client needed on the host.
        exec 3<>"/dev/tcp/127.0.0.2/$port"
        printf 'POST /burst?fps=4&seconds=60 HTTP/1.0\r\nHost: 127.0.0.2\r\n\r\n' >&3
        head -c 300 <&3 | tail -n1; echo
        exec 3<&-
    done
    echo "== cameras at 4 frames/s for 60 s; the scaling rule runs every 10 s (fogmesh app events face-detection shows why)"
    started=$(date +%s) peak=1
    while :; do
        sleep 5
        detectors=$(docker ps -q --filter "label=$MARKER" --filter "label=fogmesh.workload=fog-processor" | wc -l)
        [ "$detectors" -gt "$peak" ] && peak=$detectors
        printf '%4ss  detectors running: %s  queue: %s  frames in/s: %s  faces/s: %s\n' "$(( $(date +%s) - started ))" "$detectors" \
            "$(promql 'max(frame_queue_depth)')" "$(promql 'sum(rate(frames_received_total[30s]))')" "$(promql 'sum(rate(faces_detected_total[30s]))')"
        if [ "$peak" -gt 1 ] && [ "$detectors" -eq 1 ]; then echo "scaled up to $peak detectors and back to 1"; break; fi
        if [ $(( $(date +%s) - started )) -gt 400 ]; then echo "stopped watching after 400 s"; break; fi
    done
    echo "== the scaling decisions (all rounds: $BIN/fogmesh app events face-detection)"
    "$BIN/fogmesh" app events face-detection --last 100 | grep -A2 ' scaled '
}

case "${1:-}" in
    stop) stop; exit 0 ;;
    burst) burst; exit 0 ;;
    "") ;;
    *) echo "usage: bash deploy/quickstart.sh [burst|stop]" >&2; exit 2 ;;
esac

echo "== host: Docker and the demo images"
bash deploy/setup-host.sh
echo "== build (the first time takes a few minutes)"
cargo build --bins --quiet
echo "== images (face-detection components: a static release build of deploy/demo)"
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

echo "== faces (camera -> receiver -> detector; scraped every 10 s)"
faces=""
for _ in $(seq 1 60); do
    faces=$(promql 'sum(faces_detected_total)')
    [ -n "$faces" ] && [ "${faces%%.*}" -gt 0 ] && break
    printf '.'
    sleep 2
done
echo
"$BIN/fogmesh" metrics query 'sum by (instance) (faces_detected_total)'
cat <<MSG

fogmesh is running the face-detection pipeline. Try:
  export FOGMESH_CONFIG=$WORK/master/client.conf
  $BIN/fogmesh app show face-detection
  $BIN/fogmesh app events face-detection --follow
  $BIN/fogmesh metrics query 'sum(rate(faces_detected_total[1m]))'        # faces per second
  $BIN/fogmesh metrics query 'histogram_quantile(0.9, sum by (le) (rate(detection_seconds_bucket[1m])))'
  the collector's page: http://127.0.0.4:8080/  (JSON: /status.json)
  bash deploy/quickstart.sh burst    # more frames: watch the detectors scale up, then down
Logs are in $WORK. Remove everything with: bash deploy/quickstart.sh stop
MSG
