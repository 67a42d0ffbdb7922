#!/usr/bin/env bash
# The test command: prepares the host (Docker) and runs every test of the
# workspace: unit, property and end-to-end tests with the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh
cargo test --workspace --locked --no-fail-fast "$@"
