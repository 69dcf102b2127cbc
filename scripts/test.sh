#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs the
# whole suite. This is the README's test command, and what CI runs.
#
#   - libclang-dev: bindgen for the bundled RocksDB build
#   - python3 + cryptography: the independent Python IOU signer that checks
#     docs/iou-format.md from outside Rust
#   - libxml2-utils: xmllint validates every generated pain.001/pain.002
#     against the official ISO 20022 XSDs in schemas/iso20022
#   - nodejs + npm, then tools/node (pinned by its package-lock): a real
#     anvil node, solc to recompile the contracts, OpenZeppelin's ERC-20
#   - the client packages' own dependencies, by their own scripts
#     (clients/typescript: npm ci; clients/python: a venv under ~/.cache)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# The Python client's checks run in a virtualenv (Debian splits venv out).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v xmllint >/dev/null 2>&1 || need_apt+=(libxml2-utils)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# cryptography: the independent IOU signer; achkit and carta-ach: two
# independent NACHA validators run on the files Tally writes;
# http-message-signatures (with requests): an independent RFC 9421 signer,
# the pay-per-crawl crawler of tests/gate.rs.
if ! python3 -c 'import cryptography, achkit, ach.parser, http_message_signatures, requests' >/dev/null 2>&1; then
  pkgs=(cryptography achkit==0.2.0 carta-ach==0.4.5 http-message-signatures==0.6.1 "requests>=2.31,<3")
  python3 -m pip install --quiet "${pkgs[@]}" || python3 -m pip install --quiet --break-system-packages "${pkgs[@]}"
fi

if [ ! -x tools/node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil ] \
   || [ ! -d tools/node/node_modules/solc ] || [ ! -d tools/node/node_modules/@openzeppelin/contracts ]; then
  npm ci --prefix tools/node --no-audit --no-fund --loglevel=error
fi

# A persistent target directory outside the clone keeps reruns incremental
# (the bundled RocksDB C++ build alone takes ~15 minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
# Property tests draw from a fixed seed, so a run is reproducible; set
# PROPTEST_RNG_SEED yourself to explore other cases.
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261122}"
status=0
cargo test --workspace --all-targets --no-fail-fast || status=$?

# The client packages, each against the real `tally serve` binary the Rust
# tests just built: the TypeScript plugin with the official @x402/* SDKs
# (npm ci, build, typecheck, lint, test, npm pack), and the Python package
# with the official `x402` SDK and its gRPC streamer (venv, ruff, mypy,
# pytest, wheel).
export TALLY_BIN="${TALLY_BIN:-$CARGO_TARGET_DIR/debug/tally}"
bash clients/typescript/scripts/ci.sh || status=$?
bash clients/python/scripts/ci.sh || status=$?
exit "$status"
