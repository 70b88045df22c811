#!/usr/bin/env bash
# Builds everything (installing missing packages first) and runs every test. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_TARGET=all bash scripts/setup.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" --timeout 900
