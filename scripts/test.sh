#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs the
# whole suite. This is the README's test command, and what CI runs.
#
#   - libclang-dev: bindgen for the bundled RocksDB build
#   - python3 + cryptography: the independent Python IOU signer that checks
#     docs/iou-format.md from outside Rust
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if ! python3 -c 'import cryptography' >/dev/null 2>&1; then
  python3 -m pip install --quiet cryptography || python3 -m pip install --quiet --break-system-packages cryptography
fi

# A persistent target directory outside the clone keeps reruns incremental
# (the bundled RocksDB C++ build alone takes ~15 minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
cargo test --workspace --all-targets --no-fail-fast
