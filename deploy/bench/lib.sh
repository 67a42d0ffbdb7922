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
    for _ in $(seq 1 100); do "$BIN/fogmesh" node list 2>/dev/null | grep -q ' ready ' && return 0; sleep 0.1; done
    echo "the agent did not become ready: see $WORK/agent.log" >&2
    exit 1
}

# bench_stop_all [SIGNAL]: every process a WORK/*.pid names.
bench_stop_all() {
    local f
    for f in "$WORK"/*.pid; do [ -e "$f" ] && kill "-${1:-TERM}" "$(cat "$f")" 2>/dev/null || true; done
    return 0
}
