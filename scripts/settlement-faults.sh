#!/usr/bin/env bash
# The long settlement fault campaign: ROUNDS rounds (default 100), each
# settling one epoch on a real `tally serve` and a real anvil chain while one
# fault is injected (a crash or an error at a failpoint, the node killed,
# down or refusing, a transaction dropped or its nonce taken, the outbox not
# writable), then resuming and auditing every payout on chain and in the
# outbox. Prints the figures table: faults injected per kind, settlements
# completed, double payouts, missed payouts (both must be 0).
#
#   scripts/settlement-faults.sh [ROUNDS] [SEED]
#
# The seed (default 1, or $TALLY_FAULT_SEED) makes a run reproducible: the
# same seed injects the same faults in the same order.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-100}"
seed="${2:-${TALLY_FAULT_SEED:-1}}"
case "$rounds$seed" in
  *[!0-9]*) echo "usage: $0 [ROUNDS] [SEED] (numbers)" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
TALLY_FAULT_ROUNDS="$rounds" TALLY_FAULT_SEED="$seed" \
  cargo test --release --workspace --test settlement_faults -- --nocapture --test-threads 1
