#!/usr/bin/env bash
# The main job on embedded defaults: builds Tally (release), then runs the
# demo: an engine on a fresh ledger, simulated crawlers streaming signed
# IOUs, balances, an epoch seal and a full ledger audit.
set -euo pipefail
cd "$(dirname "$0")/.."
# libclang-dev: bindings of the bundled RocksDB; make: the bundled jemalloc.
need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (needed to build the bundled RocksDB and jemalloc)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
exec cargo run --release -- demo "$@"
