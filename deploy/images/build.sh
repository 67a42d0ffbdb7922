#!/usr/bin/env bash
# Builds fogmesh's local container images without any registry: every folder
# here with a Dockerfile is one image, tagged with the line in its TAG file
# (default fogmesh/<folder>:test). Each build context is the folder plus what
# its Dockerfile COPYs from outside it:
#   busybox                    the host's static busybox (images start FROM scratch)
#   fogmesh-demo               the face-detection pipeline's components, built
#                              here as one static release binary (deploy/demo)
#   seeta_fd_frontal_v1.0.bin  rustface's face model and test.png, its test
#   test.png                   picture, read from the crate in the cargo registry
#
# Usage: deploy/images/build.sh [--force] [folder...]
# Idempotent: an image whose context has not changed is kept (its label
# fogmesh.context holds the context's hash) unless --force.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# The classic builder is all a Debian docker.io has; say so to silence its notice.
export DOCKER_BUILDKIT=0
force=0
only=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) only+=("$arg") ;;
    esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A dynamically linked busybox would not run in a scratch image.
is_static() { [ -x "$1" ] && { ! ldd "$1" >/dev/null 2>&1 || ldd "$1" 2>&1 | grep -q 'statically linked'; }; }

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

# The demo binary: release (detection is ~10x slower in debug), statically
# linked, in its own target folder so it never waits on or invalidates the
# workspace's debug build.
demo_bin=""
ensure_demo() {
    [ -n "$demo_bin" ] && return
    local triple
    triple="$(rustc -vV | sed -n 's/^host: //p')"
    echo "build-images: building fogmesh-demo (release, static, $triple)"
    (cd "$root" && CARGO_TARGET_DIR="$root/target/demo" RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked --quiet -p fogmesh-demo --target "$triple")
    demo_bin="$root/target/demo/$triple/release/fogmesh-demo"
    if ! is_static "$demo_bin"; then
        echo "build-images: $demo_bin is not statically linked" >&2
        exit 1
    fi
}

# rustface's model and test picture ship inside its crate package.
rustface_dir=""
ensure_rustface() {
    [ -n "$rustface_dir" ] && return
    local manifest
    manifest="$(cd "$root" && cargo metadata --format-version 1 --locked 2>/dev/null |
        grep -o '"manifest_path":"[^"]*/rustface-[0-9.]*/Cargo.toml"' | head -n1 | cut -d'"' -f4)"
    rustface_dir="$(dirname "$manifest")"
    if [ ! -f "$rustface_dir/model/seeta_fd_frontal_v1.0.bin" ] || [ ! -f "$rustface_dir/test.png" ]; then
        (cd "$root" && cargo fetch --locked --quiet)
    fi
    if [ ! -f "$rustface_dir/model/seeta_fd_frontal_v1.0.bin" ]; then
        echo "build-images: rustface's model is not in the cargo registry (looked in '$rustface_dir')" >&2
        exit 1
    fi
}

# Copies into $1 what the Dockerfile there COPYs from outside its folder.
add_outside_files() {
    local ctx="$1"
    if grep -q '^COPY busybox ' "$ctx/Dockerfile"; then ensure_busybox; cp /bin/busybox "$ctx/busybox"; fi
    if grep -q '^COPY fogmesh-demo ' "$ctx/Dockerfile"; then ensure_demo; cp "$demo_bin" "$ctx/fogmesh-demo"; fi
    if grep -q '^COPY seeta_fd_frontal_v1.0.bin ' "$ctx/Dockerfile"; then
        ensure_rustface; cp "$rustface_dir/model/seeta_fd_frontal_v1.0.bin" "$ctx/"
    fi
    if grep -q '^COPY test.png ' "$ctx/Dockerfile"; then ensure_rustface; cp "$rustface_dir/test.png" "$ctx/"; fi
}

context_hash() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16); }

# Tests build the images from several processes at once: one at a time.
exec 9>"${TMPDIR:-/tmp}/fogmesh-build-images.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

for dir in "$here"/*/; do
    dir="${dir%/}"
    name="$(basename "$dir")"
    [ -f "$dir/Dockerfile" ] || continue
    if [ "${#only[@]}" -gt 0 ] && [[ ! " ${only[*]} " =~ " $name " ]]; then continue; fi
    tag="fogmesh/$name:test"
    if [ -f "$dir/TAG" ]; then tag="$(head -n1 "$dir/TAG" | tr -d '[:space:]')"; fi

    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' EXIT
    cp -a "$dir"/. "$ctx"/
    add_outside_files "$ctx"
    # A rebuilt base image means a rebuild here too.
    base="$(sed -n 's/^FROM \(fogmesh\/[^ ]*\).*/\1/p' "$ctx/Dockerfile" | head -n1)"
    if [ -n "$base" ]; then docker image inspect -f '{{.Id}}' "$base" >"$ctx/.base-image"; fi
    hash="$(context_hash "$ctx")"
    have="$(docker image inspect -f '{{index .Config.Labels "fogmesh.context"}}' "$tag" 2>/dev/null || true)"
    if [ "$force" -eq 0 ] && [ "$have" = "$hash" ]; then
        echo "build-images: $tag is up to date"
    else
        id="$(docker build -q --label "fogmesh.context=$hash" -t "$tag" "$ctx")"
        echo "build-images: built $tag ($id)"
    fi
    rm -rf "$ctx"
    trap - EXIT
done
