#!/usr/bin/env bash
# Installs the Debian packages Genesis builds with (only those missing), then configures and builds it in ./build.
# Idempotent: a second run installs nothing and rebuilds only what changed. It builds the CLI (./build/genesis) and
# what it links; SETUP_TARGET=all builds every target, the tests included (scripts/test.sh does), or names one.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config git
          libxbyak-dev libcli11-dev nlohmann-json3-dev libfmt-dev libsqlite3-dev libpcre2-dev
          libgtest-dev libgmock-dev libopenblas-dev libutf8proc-dev python3
          libcpp-httplib-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The `openai` Python package: the server's tests (src/server/serve_test.py) drive `genesis serve` through the real
# client. Installed for the python3 on PATH (the one CTest runs), with pip (Debian's python3-pip if pip is missing).
if ! python3 -c "import openai" 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "setup: installing the openai Python package (for the server tests)"
  python3 -m pip install --quiet openai 2>/dev/null || python3 -m pip install --quiet --break-system-packages openai
fi

BUILD_DIR=${BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${GENESIS_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$jobs" --target "${SETUP_TARGET:-genesis_cli}"
echo "setup: built $BUILD_DIR/genesis"
