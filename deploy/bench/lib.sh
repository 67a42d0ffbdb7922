# Shared by the benchmark scripts (sourced, not run): one master and agents
# started the same way everywhere, and the process figures they read.
# The caller sets BIN (the binaries' folder) and WORK (a fresh folder); every
# process started here leaves WORK/NAME.pid for bench_stop_all.

now_ms() { date +%s%3N; }
# CPU seconds (user + system) of a process so far.
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# bench_master_init API: a new master data dir WORK/master, the CLI set up for it.
bench_master_init() {
    "$BIN/fogmesh-master" init --data-dir "$WORK/master" --api "$1" >/dev/null 2>&1
    export FOGMESH_CONFIG="$WORK/master/client.conf"
}

# bench_master_start API QUIC [serve args...]: serve, wait until the API answers.
bench_master_start() {
    local api=$1 quic=$2
    shift 2
    "$BIN/fogmesh-master" serve --data-dir "$WORK/master" --api "$api" --quic "$quic" "$@" >>"$WORK/master.log" 2>&1 &
    local pid=$!
    echo $pid >"$WORK/master.pid"
    for _ in $(seq 1 100); do
        # Ours must be the one answering, not a leftover on the same port.
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        "$BIN/fogmesh" node list >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the master did not start:" >&2
    tail -3 "$WORK/master.log" >&2
    exit 1
}

# bench_agent_start AGENT_BIN QUIC NAME IP: join with a fresh token, run, wait
# until the master shows the node ready.
bench_agent_start() {
    local agent_bin=$1 quic=$2 name=$3 ip=$4
    FOGMESH_JOIN_TOKEN=$("$BIN/fogmesh" token create 2>/dev/null) "$agent_bin" run --master "$quic" \
        --data-dir "$WORK/agent" --name "$name" --public-ip "$ip" >"$WORK/agent.log" 2>&1 &
    echo $! >"$WORK/agent.pid"
    for _ in $(seq 1 100); do [ "$(bench_ready_count)" -ge 1 ] && return 0; sleep 0.1; done
    echo "the agent did not become ready: see $WORK/agent.log" >&2
    exit 1
}

# bench_edge_adt FILE IP REPLICAS IMAGE [ENV_NAME ENV_VALUE]: an ADT of
# one Deployment, REPLICAS containers of IMAGE on the Edge node at IP.
bench_edge_adt() {
    local env=""
    [ $# -ge 6 ] && env=", env: [{name: $5, value: \"$6\"}]"
    cat >"$1" <<ADT
tosca_definitions_version: tosca_simple_yaml_1_2
topology_template:
  node_templates:
    node: {type: tosca.nodes.MiCADO.Edge, properties: {public_ip: $2}}
    app:
      type: tosca.nodes.MiCADO.Container.Application.Docker.Deployment
      occurrences: [$3, $3]
      properties: {image: $4$env}
      requirements: [{host: node}]
ADT
}

# bench_remove_labelled KEY=VALUE: every container with that label. One
# label per call: docker ANDs label filters. A container already being
# removed (e.g. by its agent) is fine.
bench_remove_labelled() {
    local ids
    ids=$(docker ps -aq --filter "label=$1" 2>/dev/null || true)
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
    return 0
}

# bench_remove_containers NODE: every container the agent of NODE made.
bench_remove_containers() { bench_remove_labelled "fogmesh.node=$1"; }

# bench_master_crash: kill -9 the master, and wait until it is gone (its
# store lock released, so a restart can open the store).
bench_master_crash() {
    local pid
    pid=$(cat "$WORK/master.pid")
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
}

# Nodes the master counts ready (`node summary`: counts only, cheap for
# 10,000 nodes where `node list` is megabytes of JSON).
bench_ready_count() { "$BIN/fogmesh" node summary 2>/dev/null | awk 'NR == 1 {print $3 + 0; found = 1} END {if (!found) print 0}'; }

# bench_wait_ready COUNT WHAT POLL LIMIT: prints the seconds until COUNT
# nodes are ready, polling every POLL seconds, failing after LIMIT seconds;
# writes the seconds until 99 % were ready to WORK/WHAT-p99 (a straggler's
# idle timeout decides the last one).
bench_wait_ready() {
    local count=$1 what=$2 poll=$3 limit=$4 t0 n p99=""
    t0=$(now_ms)
    while :; do
        n=$(bench_ready_count)
        if [ -z "$p99" ] && [ $((n * 100)) -ge $((count * 99)) ]; then
            p99=$(awk -v a="$(now_ms)" -v b="$t0" 'BEGIN {printf "%.1f", (a - b) / 1000}')
            echo "$p99" >"$WORK/$what-p99"
        fi
        [ "$n" -ge "$count" ] && break
        printf '\r  %s: %s/%s ready' "$what" "$n" "$count" >&2
        if [ $(( $(now_ms) - t0 )) -ge $((limit * 1000)) ]; then echo " timed out" >&2; exit 1; fi
        sleep "$poll"
    done
    printf '\r  %s: %s/%s ready\n' "$what" "$count" "$count" >&2
    awk -v a="$(now_ms)" -v b="$t0" 'BEGIN {printf "%.1f", (a - b) / 1000}'
}

# bench_stop_all [SIGNAL]: every process a WORK/*.pid names. The pid file
# goes with it: a later run must not signal whatever reuses the number.
bench_stop_all() {
    local f
    for f in "$WORK"/*.pid; do
        [ -e "$f" ] || continue
        kill "-${1:-TERM}" "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    return 0
}
