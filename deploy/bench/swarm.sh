#!/usr/bin/env bash
# fogmesh beside Docker Swarm on the same engine, same image, same machine:
# deploy N replicas (N = 1, 10, 30), update the env of 10 replicas, and
# kill -> replacement running. Runs are interleaved (fogmesh, swarm,
# fogmesh, ...) and both are timed by the same outside observer: a loop
# that polls `docker ps` every 50 ms until the containers run. Deploys are
# also timed for N parallel `docker run -d` with no orchestrator: the
# engine's own floor on this machine.
#
#   bash deploy/bench/swarm.sh [ROUNDS]     (default 5 rounds)
#
# Prints medians and the fogmesh/swarm ratio; writes target/bench/swarm.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}
WORK=${FOGMESH_BENCH_DIR:-/tmp/fogmesh-bench-swarm}
API=127.0.0.1:7610 QUIC=127.0.0.1:7611 MQTT=127.0.0.1:7612 IP=127.0.0.71
BIN=target/release
OUT=target/bench
IMAGE=fogmesh/busybox:test

bash deploy/setup-host.sh >/dev/null
bash deploy/images/build.sh busybox >/dev/null
echo "== build (release)"
cargo build --release --locked --quiet -p fogmesh-master -p fogmesh-agent

source deploy/bench/lib.sh
cleanup() {
    bench_stop_all
    docker service rm fmbench >/dev/null 2>&1 || true
    bench_remove_containers bench
    bench_remove_labelled fmbench.raw=1
    [ "${LEFT_SWARM:-0}" = 1 ] && docker swarm leave --force >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    LEFT_SWARM=1
    for _ in $(seq 1 50); do docker node ls >/dev/null 2>&1 && break; sleep 0.2; done
fi

bench_master_init "$API"
bench_master_start "$API" "$QUIC" --mqtt-listen "$MQTT"
bench_agent_start "$BIN/fogmesh-agent" "$QUIC" bench "$IP"

# Running containers matching a docker ps filter.
running() { docker ps -q --filter "$1" | wc -l; }
# Waits until `running $1` reaches $2 (and, with $3, the env of all has $3); prints ms since $4.
wait_running() {
    local filter=$1 want=$2 env=${3:-} t0=$4
    while :; do
        if [ "$(running "$filter")" -ge "$want" ]; then
            if [ -z "$env" ]; then break; fi
            # Done when WANT running containers have the new env (old
            # versions may still be winding down beside them).
            ids=$(docker ps -q --filter "$filter")
            if [ "$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' $ids | grep -c "^$env$")" -ge "$want" ]; then break; fi
        fi
        sleep 0.05
    done
    echo $(( $(now_ms) - t0 ))
}

adt() { bench_edge_adt "$WORK/bench.yaml" "$IP" "$1" "$IMAGE" VERSION "$2"; } # $1 replicas, $2 version

FM='label=fogmesh.node=bench'
SW='label=com.docker.swarm.service.name=fmbench'
RAW='label=fmbench.raw=1'
declare -A results
record() { results[$1]="${results[$1]:-} $2"; }

for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS"
    for n in 1 10 30; do
        adt "$n" 1
        t0=$(now_ms); "$BIN/fogmesh" app submit "$WORK/bench.yaml" --name bench --no-wait >/dev/null
        record "fogmesh deploy $n" "$(wait_running "$FM" "$n" "" "$t0")"
        "$BIN/fogmesh" app delete bench >/dev/null
        while [ "$(docker ps -aq --filter "$FM" | wc -l)" -gt 0 ]; do sleep 0.1; done

        t0=$(now_ms); docker service create -d --quiet --name fmbench --replicas "$n" --env VERSION=1 "$IMAGE" >"$WORK/service.log" 2>&1 ||
            { echo "docker service create failed: $(cat "$WORK/service.log")" >&2; exit 1; }
        record "swarm deploy $n" "$(wait_running "$SW" "$n" "" "$t0")"
        docker service rm fmbench >/dev/null
        while [ "$(docker ps -aq --filter "$SW" | wc -l)" -gt 0 ]; do sleep 0.1; done

        # The engine's own floor: N parallel `docker run -d`, no orchestrator.
        t0=$(now_ms)
        runs=()
        for _ in $(seq 1 "$n"); do docker run -d --label fmbench.raw=1 "$IMAGE" sleep 3600 >/dev/null & runs+=($!); done
        record "docker deploy $n" "$(wait_running "$RAW" "$n" "" "$t0")"
        wait "${runs[@]}"
        docker rm -f $(docker ps -aq --filter "$RAW") >/dev/null
    done

    # Update the env of 10 replicas; then kill one and time its replacement.
    adt 10 1; "$BIN/fogmesh" app submit "$WORK/bench.yaml" --name bench --timeout 120s >/dev/null
    adt 10 2; t0=$(now_ms); "$BIN/fogmesh" app update bench "$WORK/bench.yaml" --no-wait >/dev/null
    record "fogmesh update 10" "$(wait_running "$FM" 10 VERSION=2 "$t0")"
    sleep 12 # past the rollback window: old versions are gone
    victim=$(docker ps -q --filter "$FM" | head -n1)
    t0=$(now_ms); docker kill "$victim" >/dev/null
    sleep 0.05; record "fogmesh kill->running" "$(wait_running "$FM" 10 "" "$t0")"
    "$BIN/fogmesh" app delete bench >/dev/null
    while [ "$(docker ps -aq --filter "$FM" | wc -l)" -gt 0 ]; do sleep 0.1; done

    docker service create -d --quiet --name fmbench --replicas 10 --env VERSION=1 "$IMAGE" >/dev/null 2>&1
    wait_running "$SW" 10 "" "$(now_ms)" >/dev/null
    t0=$(now_ms); docker service update -d --quiet --env-add VERSION=2 fmbench >/dev/null 2>&1
    record "swarm update 10" "$(wait_running "$SW" 10 VERSION=2 "$t0")"
    sleep 2
    victim=$(docker ps -q --filter "$SW" | head -n1)
    t0=$(now_ms); docker kill "$victim" >/dev/null
    sleep 0.05; record "swarm kill->running" "$(wait_running "$SW" 10 "" "$t0")"
    docker service rm fmbench >/dev/null
    while [ "$(docker ps -aq --filter "$SW" | wc -l)" -gt 0 ]; do sleep 0.1; done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)] / 1000}'; }
{
    echo "{"
    first=1
    for what in "deploy 1" "deploy 10" "deploy 30" "update 10" "kill->running"; do
        f=$(echo "${results[fogmesh $what]}" | median) s=$(echo "${results[swarm $what]}" | median)
        [ $first = 1 ] || echo ","
        first=0
        d=null floor=""
        if [ -n "${results[docker $what]:-}" ]; then
            d=$(echo "${results[docker $what]}" | median)
            floor=$(printf '   docker run x N %6.2f s' "$d")
        fi
        printf '  "%s": {"fogmesh_s": %s, "swarm_s": %s, "docker_run_s": %s, "fogmesh_runs_ms": "%s", "swarm_runs_ms": "%s", "docker_run_runs_ms": "%s"}' \
            "$what" "$f" "$s" "$d" "${results[fogmesh $what]# }" "${results[swarm $what]# }" "${results[docker $what]:-}"
        printf '%-16s fogmesh %6.2f s   swarm %6.2f s   ratio %.2f%s\n' "$what" "$f" "$s" "$(awk -v a="$f" -v b="$s" 'BEGIN {print a / b}')" "$floor" >&2
    done
    echo
    echo "}"
} >"$OUT/swarm.json"
echo "medians of $ROUNDS interleaved rounds; written to $OUT/swarm.json" >&2
