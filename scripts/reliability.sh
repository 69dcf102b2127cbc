#!/usr/bin/env bash
# The long reliability runs, one after another, each printing its figures
# table (docs/reliability.md explains every column):
#
#   1. the crash harness: SIGKILL under load, CYCLES cycles (scripts/crash-test.sh);
#   2. the settlement fault campaign: ROUNDS faults injected, double and
#      missed payouts counted (scripts/settlement-faults.sh);
#   3. every fuzz target for SECONDS each (scripts/fuzz.sh; needs nightly and
#      installs cargo-fuzz if absent).
#
#   scripts/reliability.sh [CYCLES] [ROUNDS] [SECONDS]     defaults: 50 70 200
#
# The short versions of all three run in the test suite (./scripts/test.sh).
# Runs stop at the first failure: a lost or duplicated IOU, a double or missed
# payout, or a fuzzing crash (kept in fuzz/regressions/).
set -euo pipefail
cd "$(dirname "$0")/.."

cycles="${1:-50}"
rounds="${2:-70}"
seconds="${3:-200}"
case "$cycles$rounds$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [CYCLES] [ROUNDS] [SECONDS] (numbers)" >&2; exit 2 ;;
esac

echo "== crash harness: $cycles cycles"
bash scripts/crash-test.sh "$cycles"
echo
echo "== settlement faults: $rounds rounds"
bash scripts/settlement-faults.sh "$rounds" 1
echo
echo "== fuzzing: every target for ${seconds}s"
bash scripts/fuzz.sh all "$seconds"
