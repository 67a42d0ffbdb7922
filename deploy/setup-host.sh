#!/usr/bin/env bash
# Prepares a Debian/Ubuntu host for fogmesh's tests and quickstart: installs
# the Docker engine (and curl, which tests use) if missing and starts the
# engine if it is not running. With --peers it also installs what the tests
# and benchmarks run beside fogmesh: mosquitto, VictoriaMetrics and the
# Prometheus node-exporter (binaries only; none is started here).
# Idempotent; needs root (or sudo) only for what is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io iptables)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${1:-}" = "--peers" ]; then
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
    command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    echo "setup-host: starting dockerd (log: /var/log/fogmesh-dockerd.log)"
    as_root sh -c 'nohup dockerd >/var/log/fogmesh-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup-host: dockerd did not start; last lines of its log:" >&2
        tail -n 30 /var/log/fogmesh-dockerd.log >&2 || true
        exit 1
    fi
fi
echo "setup-host: docker $(docker version --format '{{.Server.Version}}') is running"
