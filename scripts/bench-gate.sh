#!/usr/bin/env bash
# The ecosystem benchmarks of docs/performance.md, each pair in one run:
#
#  1. benches/gate_load.rs: paid requests through the gateway (inside
#     `tally serve`, and standalone in front of the same origin) against
#     unpaid pass-through; peak (closed loop) and the latency at half the paid
#     peak (open loop);
#  2. the Python gRPC streamer (clients/python/bench/stream_bench.py) against
#     `tally loadgen`, into one release `tally serve`, alternating
#     loadgen, Python, loadgen, Python so drift on this noisy machine shows.
#
#   bash scripts/bench-gate.sh            # both
#   REQUESTS=40000 bash scripts/bench-gate.sh
#
# Release build; ratios are what to quote (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
export CARGO_TERM_COLOR=never
REQUESTS="${REQUESTS:-20000}"
IOUS="${IOUS:-200000}"
TALLY="$CARGO_TARGET_DIR/release/tally"
VENV="${TALLY_PY_VENV:-$HOME/.cache/tally-pyenv}"

cargo build --release --bin tally >&2
cargo bench --bench gate_load --no-run >&2

echo "## gateway: paid against pass-through ($REQUESTS requests per phase)"
cargo bench --bench gate_load -- --tally "$TALLY" --requests "$REQUESTS" --standalone

echo
echo "## Python gRPC streamer against tally loadgen ($IOUS IOUs each)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import tally_x402' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -e clients/python
fi
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
TOKEN=bench-token-0123456789
TALLY_ADMIN_TOKEN="$TOKEN" TALLY_LOG=warn "$TALLY" serve --data-dir "$WORK/ledger" --grpc-addr 127.0.0.1:0 \
  --http-addr off --metrics-addr off --network tally:local --ready-file "$WORK/ready" &
SERVER_PID=$!
for _ in $(seq 1 600); do [ -s "$WORK/ready" ] && break; sleep 0.1; done
[ -s "$WORK/ready" ] || { echo "tally serve did not start" >&2; exit 1; }
ADDR="http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_addr"])' "$WORK/ready")"
echo "| run | client | IOUs/s |"
echo "|---|---|---|"
for run in 1 2; do
  rust=$("$TALLY" loadgen --server "$ADDR" --admin-token "$TOKEN" --register --ious "$IOUS" --streams 4 --json \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ious_per_s"]))')
  echo "| $run | tally loadgen (Rust), 4 streams | $rust |"
  py=$("$VENV/bin/python" clients/python/bench/stream_bench.py --server "$ADDR" --admin-token "$TOKEN" \
    --ious "$IOUS" --streams 4 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ious_per_second"])')
  echo "| $run | tally-x402 Streamer (Python), 4 streams | $py |"
done
