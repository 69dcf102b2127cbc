#!/usr/bin/env bash
# The long crash test: builds Tally in release mode and runs the crash harness
# (tests/crash_recovery.rs) for CYCLES kill/restart cycles, then prints the
# figures table (cycles, IOUs sent, acknowledged, lost, duplicated, ...).
#
#   scripts/crash-test.sh [CYCLES]        default 50 cycles
#
# Environment: TALLY_CRASH_CLIENTS (default 8 here), TALLY_CRASH_SEED (the
# kill schedule; printed, so a failing run can be repeated exactly),
# CARGO_TARGET_DIR (default $HOME/.cache/tally-target, a warm shared cache).
# The full log is kept in $CARGO_TARGET_DIR/crash-test.log.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles="${1:-50}"
case "$cycles" in
  '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
export TALLY_CRASH_CYCLES="$cycles"
export TALLY_CRASH_CLIENTS="${TALLY_CRASH_CLIENTS:-8}"
export TALLY_CRASH_SEED="${TALLY_CRASH_SEED:-0x7a11c7a5}"
log="$CARGO_TARGET_DIR/crash-test.log"
mkdir -p "$CARGO_TARGET_DIR"

echo "building (release) ..."
cargo build --release --workspace --quiet
# Run the built test binary itself: the run must not rebuild in the middle.
harness=$(cargo test --release --workspace --test crash_recovery --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*crash_recovery[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$harness" ] || { echo "could not build the crash harness (cargo test --release --test crash_recovery)" >&2; exit 1; }

echo "crash test: $cycles cycles, $TALLY_CRASH_CLIENTS clients, seed $TALLY_CRASH_SEED (log: $log)"
started=$(date +%s)
status=0
"$harness" --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
elapsed=$(($(date +%s) - started))

grep -E '^cycle [0-9]+:' "$log" | tail -n 5 || true
echo
sed -n '/^=== crash-test figures ===$/,/^=== end of figures ===$/p' "$log" | sed '1d;$d'
echo
if [ "$status" -ne 0 ]; then
  echo "CRASH TEST FAILED after ${elapsed}s (exit $status); see $log" >&2
  grep -E 'panicked|assert' "$log" | head -n 20 >&2 || true
  exit "$status"
fi
echo "crash test passed: $cycles cycles in ${elapsed}s, nothing acknowledged lost, nothing duplicated"
