#!/usr/bin/env bash
# fogmesh quickstart on one machine: a master, three fog agents with the
# public IPs 127.0.0.2-4 (camera, fog and cloud-side nodes of the example),
# and the face-detection pipeline from adts/face-detection.yaml.
#
#   bash deploy/quickstart.sh        # start everything, submit the app
#   bash deploy/quickstart.sh stop   # stop the processes, remove the containers
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${FOGMESH_QUICKSTART_DIR:-/tmp/fogmesh-quickstart}
BIN=target/debug
NODES=(camera:127.0.0.2 fog:127.0.0.3 cloud:127.0.0.4)

stop() {
    if [ -d "$WORK" ]; then
        for pidfile in "$WORK"/*.pid; do
            [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
        done
    fi
    for n in "${NODES[@]}"; do
        ids=$(docker ps -aq --filter "label=fogmesh.node=${n%%:*}" 2>/dev/null || true)
        [ -n "$ids" ] && docker rm -f -v $ids >/dev/null
    done
    echo "quickstart stopped"
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

echo "== host: Docker and the demo images"
bash deploy/setup-host.sh
echo "== build"
cargo build --bins --quiet
bash deploy/images/build.sh

stop >/dev/null 2>&1 || true
rm -rf "$WORK" && mkdir -p "$WORK"

echo "== master"
"$BIN/fogmesh-master" init --data-dir "$WORK/master"
"$BIN/fogmesh-master" serve --data-dir "$WORK/master" >"$WORK/master.log" 2>&1 &
echo $! >"$WORK/master.pid"
export FOGMESH_CONFIG="$WORK/master/client.conf"
for _ in $(seq 1 50); do "$BIN/fogmesh" node list >/dev/null 2>&1 && break; sleep 0.2; done

echo "== fog agents"
for n in "${NODES[@]}"; do
    name=${n%%:*} ip=${n##*:}
    token=$("$BIN/fogmesh" token create --ttl 10m 2>/dev/null)
    "$BIN/fogmesh-agent" run --master 127.0.0.1:7401 --token "$token" \
        --data-dir "$WORK/agent-$name" --name "$name" --public-ip "$ip" --label "role=$name" \
        >"$WORK/agent-$name.log" 2>&1 &
    echo $! >"$WORK/agent-$name.pid"
done
for _ in $(seq 1 50); do
    [ "$("$BIN/fogmesh" node list | grep -c ' ready ')" -ge 3 ] && break
    sleep 0.2
done
"$BIN/fogmesh" node list

echo "== submit adts/face-detection.yaml"
"$BIN/fogmesh" app submit adts/face-detection.yaml --timeout 120s
"$BIN/fogmesh" app show face-detection
echo
docker ps --filter label=fogmesh.app --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'
cat <<MSG

fogmesh is running. Try:
  export FOGMESH_CONFIG=$WORK/master/client.conf
  $BIN/fogmesh node list
  $BIN/fogmesh app show face-detection
Logs are in $WORK. Stop everything with: bash deploy/quickstart.sh stop
MSG
