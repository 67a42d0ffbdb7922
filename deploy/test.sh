#!/usr/bin/env bash
# The test command: prepares the host (Docker; mosquitto and VictoriaMetrics
# for the metrics tests), builds the images and runs every test of the
# workspace: unit, property and end-to-end tests with the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-host.sh --peers
# The container images the tests run (the demo's static release build included).
bash deploy/images/build.sh
cargo test --workspace --locked --no-fail-fast "$@"
