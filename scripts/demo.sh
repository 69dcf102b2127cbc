#!/usr/bin/env bash
# The main job on embedded defaults: builds Tally (release), then runs the
# demo: an engine on a fresh ledger, simulated crawlers streaming signed
# IOUs, balances, an epoch seal and a full ledger audit.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  echo "installing libclang-dev (needed to build the bundled RocksDB)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
exec cargo run --release -- demo "$@"
