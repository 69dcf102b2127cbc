#!/usr/bin/env bash
# Where the CPU goes: one `tally serve` under one `tally loadgen` run, with the
# share of the machine each server thread used while the load ran.
#
#   bash scripts/profile.sh [LOADGEN FLAGS...]         # e.g. --batch-signed, --rate 40000 --batch 64
#   PERF=1 bash scripts/profile.sh --batch-signed      # also `perf record -g` the server (perf.data kept)
#   SERVE_FLAGS=--unsafe-skip-signature-verification bash scripts/profile.sh
#   IOUS=2000000 bash scripts/profile.sh               # default 1,000,000
#
# It uses the release binary (build it first: cargo build --release --workspace),
# a fresh data directory, 127.0.0.1 port 0, and registers loadgen's accounts
# before the measured run. Thread shares are read from /proc (utime + stime)
# from the moment the server starts working to the end of the load; "machine"
# is both cores. The server is stopped by pid and its directory removed, unless
# PERF=1 (then the directory with perf.data is printed and kept, without the ledger).
set -euo pipefail
cd "$(dirname "$0")/.."

TALLY="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/release/tally"
[ -x "$TALLY" ] || { echo "profile: build first: cargo build --release --workspace" >&2; exit 1; }
command -v python3 >/dev/null || { echo "profile: python3 is needed" >&2; exit 1; }
DIR=$(mktemp -d /tmp/tally-profile.XXXXXX)
TOKEN="profile-$$"
SERVER_PID=""
PERF_PID=""
cleanup() {
  [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null && wait "$PERF_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  # The ledger is hundreds of MB per million IOUs: never kept.
  rm -rf "$DIR/data"
  if [ "${PERF:-0}" = 1 ]; then echo "kept: $DIR (perf report -i $DIR/perf.data)"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

# shellcheck disable=SC2086 # SERVE_FLAGS is a list of words
"$TALLY" serve --data-dir "$DIR/data" --grpc-addr 127.0.0.1:0 --metrics-addr off --http-addr off \
  --admin-token "$TOKEN" --ready-file "$DIR/ready.json" ${SERVE_FLAGS:-} >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  [ -s "$DIR/ready.json" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$DIR/ready.json" ] || { echo "profile: the server did not become ready" >&2; exit 1; }
ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_addr"])' "$DIR/ready.json")
"$TALLY" loadgen --server "http://$ADDR" --admin-token "$TOKEN" --register --ious 0 "$@" >/dev/null 2>&1

threads() { for t in /proc/"$SERVER_PID"/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done; }
"$TALLY" loadgen --server "http://$ADDR" --admin-token "$TOKEN" --json --ious "${IOUS:-1000000}" "$@" >"$DIR/loadgen.json" &
LOADGEN_PID=$!
# Loadgen pre-signs before it sends: start counting when the server starts working.
base=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
  [ $(($(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat") - base)) -gt 10 ] && break
  sleep 0.05
done
head -1 /proc/stat >"$DIR/stat0"
threads >"$DIR/threads0"
if [ "${PERF:-0}" = 1 ]; then
  perf record -F 499 -g -p "$SERVER_PID" -o "$DIR/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
fi
wait "$LOADGEN_PID"
head -1 /proc/stat >"$DIR/stat1"
threads >"$DIR/threads1"

python3 - "$DIR" <<'EOF'
import collections, json, sys
d = sys.argv[1]
r = json.load(open(d + "/loadgen.json"))
print(f"{r['ious_per_s']:,.0f} IOUs/s; batch ack p50 {r['batch_latency_us_p50'] / 1000:.2f} ms, "
      f"p99 {r['batch_latency_us_p99'] / 1000:.2f} ms; outcomes {r['outcomes']}")
def ticks(path):
    by_name = collections.Counter()
    for line in open(path):
        name, value = line.rsplit(" ", 1)
        by_name[name] += int(value)
    return by_name
before, after = ticks(d + "/threads0"), ticks(d + "/threads1")
s0 = [int(x) for x in open(d + "/stat0").read().split()[1:]]
s1 = [int(x) for x in open(d + "/stat1").read().split()[1:]]
total = sum(s1) - sum(s0)
idle = (s1[3] - s0[3]) + (s1[4] - s0[4])
print(f"machine busy {100 * (total - idle) / total:.0f} % (both cores, server and loadgen)")
server = 0
for name in sorted(after, key=lambda n: -(after[n] - before.get(n, 0))):
    used = after[name] - before.get(name, 0)
    server += used
    if used > 0:
        print(f"  {name:<18} {100 * used / total:5.1f} % of the machine")
print(f"  {'server, all':<18} {100 * server / total:5.1f} %")
EOF
