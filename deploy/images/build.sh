#!/usr/bin/env bash
# Builds fogmesh's local container images without any registry: every folder
# here with a Dockerfile is one image, tagged with the line in its TAG file
# (default fogmesh/<folder>:test). Each build context is the folder plus the
# host's static busybox binary as ./busybox, so images can start FROM scratch.
#
# Usage: deploy/images/build.sh [--force] [folder...]
# Idempotent: an image that already exists is skipped unless --force.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# The classic builder is all a Debian docker.io has; say so to silence its notice.
export DOCKER_BUILDKIT=0
force=0
only=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) only+=("$arg") ;;
    esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A dynamically linked busybox would not run in a scratch image.
is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }

ensure_busybox() {
    if ! is_static /bin/busybox; then
        echo "build-images: installing busybox-static"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
    fi
    if ! is_static /bin/busybox; then
        echo "build-images: /bin/busybox is missing or not statically linked" >&2
        exit 1
    fi
}

# Tests build the images from several processes at once: one at a time.
exec 9>"${TMPDIR:-/tmp}/fogmesh-build-images.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

busybox_ready=0
for dir in "$here"/*/; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    [ -f "$dir/Dockerfile" ] || continue
    if [ "${#only[@]}" -gt 0 ] && [[ ! " ${only[*]} " =~ " $name " ]]; then continue; fi
    tag="fogmesh/$name:test"
    if [ -f "$dir/TAG" ]; then tag="$(head -n1 "$dir/TAG" | tr -d '[:space:]')"; fi

    if [ "$force" -eq 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
        echo "build-images: $tag exists (use --force to rebuild)"
        continue
    fi
    if [ "$busybox_ready" -eq 0 ]; then ensure_busybox; busybox_ready=1; fi

    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' EXIT
    cp -a "$dir"/. "$ctx"/
    cp /bin/busybox "$ctx/busybox"
    id="$(docker build -q -t "$tag" "$ctx")"
    rm -rf "$ctx"
    trap - EXIT
    echo "build-images: built $tag ($id)"
done
