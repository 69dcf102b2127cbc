#!/usr/bin/env bash
# The end-to-end benchmark: Tally against its PostgreSQL peer, one table.
#
#   bash scripts/bench.sh           # the full run (~15 minutes on 2 cores)
#   bash scripts/bench.sh --quick   # a smoke run with small counts (< 1 minute once built)
#
# It builds the release binaries, starts a throwaway PostgreSQL 15 cluster (as
# the `postgres` user, on a free port, its own socket dir, fsync=on,
# synchronous_commit=on), then for each mode starts a fresh server (`tally
# serve` or the PostgreSQL peer, benches/pg_peer.rs) on 127.0.0.1 port 0,
# drives it with the unchanged `tally loadgen --json`, reads the server's
# peak RSS (VmHWM), stops it, and finally prints one table. Everything it
# started is stopped by pid and its temporary directory removed, also on
# failure.
#
# Every row runs `--measure-verify`: loadgen first measures the raw batch
# verification rate of all cores (the "verification bound") in the same
# invocation, and the row's ratio is to that. Figures from a shared machine
# are noisy: compare ratios within one run.
#
# To add a row: one more `row_tally` / `row_peer` call in the MODES section
# (a label, the PostgreSQL row it is compared with, server flags, loadgen flags).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  IOUS=50000            # per throughput row
  HALF_SECONDS=5        # the half-rate latency row lasts about this long
  MEMORY_IOUS=200000    # the memory run, in chunks of MEMORY_CHUNK
  MEMORY_CHUNK=20000
else
  IOUS=1000000
  HALF_SECONDS=20
  MEMORY_IOUS=10000000
  MEMORY_CHUNK=1000000
fi
TOKEN="bench-admin-token-$$"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}"
export CARGO_TERM_COLOR=never

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed to read loadgen's JSON (apt-get install python3)"

# --- PostgreSQL binaries --------------------------------------------------------------
pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null; then command -v "$name"; return; fi
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/$name" ]; then echo "$dir/$name"; return; fi
  done
  return 1
}
if ! pg_bin initdb >/dev/null; then
  [ "$(id -u)" = 0 ] || die "PostgreSQL (initdb, pg_ctl, postgres) is not installed"
  say "installing PostgreSQL (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
INITDB=$(pg_bin initdb) || die "initdb not found"
PG_CTL=$(pg_bin pg_ctl) || die "pg_ctl not found"
# initdb refuses root: the cluster belongs to the postgres user.
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres --); else AS_PG=(); fi

# --- Build ----------------------------------------------------------------------------
say "building release binaries"
# The peer first: a bench target builds with the dev-dependencies, which turn
# on the failpoints, and relinks target/release/tally that way. The plain
# release build after it leaves target/release/tally a production binary
# (no failpoints), which is what is measured.
cargo bench --workspace --bench pg_peer --no-run >&2
PEER=$(cargo bench --workspace --bench pg_peer --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pg_peer" and m.get("executable"):
        print(m["executable"])')
cargo build --release --workspace >&2
TALLY="$CARGO_TARGET_DIR/release/tally"
[ -x "$TALLY" ] || die "no $TALLY after the build"
[ -x "$PEER" ] || die "the pg_peer bench did not build"

# --- Processes we started, stopped by pid on any exit ------------------------------
WORK=$(mktemp -d /tmp/tally-bench.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach its cluster inside
SERVER_PID=""
SAMPLER_PID=""
PG_PID=""

stop_pid() { # pid, seconds to wait before SIGKILL
  local pid=$1 wait_s=${2:-30} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  stop_pid "$SAMPLER_PID" 2
  stop_pid "$SERVER_PID" 15
  if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
    kill -INT "$PG_PID" 2>/dev/null || true # PostgreSQL's fast shutdown
    for ((i = 0; i < 300; i++)); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PG_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls (bounded) for a ready file written by the process `pid`.
wait_ready() {
  local file=$1 pid=$2 log=$3 i
  for ((i = 0; i < 600; i++)); do
    [ -s "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the server exited before it was ready"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "the server was not ready within 60 s"
}

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
kib_of() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# --- PostgreSQL cluster ------------------------------------------------------------------
start_postgres() {
  PGDIR="$WORK/pg"
  mkdir -p "$PGDIR/data" "$PGDIR/sock"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
  "${AS_PG[@]}" "$INITDB" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
  PGPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Durable and sized for the run (no checkpoint mid-run), nothing unsafe.
  local options="-p $PGPORT -k $PGDIR/sock -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on"
  options+=" -c full_page_writes=on -c shared_buffers=1GB -c max_wal_size=16GB -c checkpoint_timeout=30min"
  options+=" -c max_connections=40"
  "${AS_PG[@]}" "$PG_CTL" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 -o "$options" start >/dev/null \
    || { cat "$PGDIR/server.log" >&2; die "PostgreSQL did not start"; }
  PG_PID=$(head -1 "$PGDIR/data/postmaster.pid")
  PG_CONN="host=$PGDIR/sock port=$PGPORT user=postgres dbname=postgres"
}

# Proportional set size of the whole PostgreSQL process tree, KiB (shared
# buffers counted once).
postgres_pss_kib() {
  local total=0 pid pss
  for pid in $PG_PID $(pgrep -P "$PG_PID" || true); do
    pss=$(awk '$1 == "Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${pss:-0}))
  done
  echo "$total"
}

# --- Servers ------------------------------------------------------------------------------
start_tally() { # dir, extra serve flags...
  local dir=$1
  shift
  mkdir -p "$dir"
  "$TALLY" serve --data-dir "$dir/data" --grpc-addr 127.0.0.1:0 --metrics-addr "${METRICS_ADDR:-off}" --http-addr off \
    --admin-token "$TOKEN" --ready-file "$dir/ready.json" "$@" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir/ready.json" "$SERVER_PID" "$dir/server.log"
  SERVER_ADDR=$(json_field "$dir/ready.json" grpc_addr)
}

start_peer() { # dir, extra peer flags...
  local dir=$1
  shift
  mkdir -p "$dir"
  "$PEER" --bench --pg "$PG_CONN" --admin-token "$TOKEN" --ready-file "$dir/ready.json" --fresh "$@" \
    >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "$dir/ready.json" "$SERVER_PID" "$dir/server.log"
  SERVER_ADDR=$(json_field "$dir/ready.json" grpc_addr)
}

stop_server() {
  stop_pid "$SERVER_PID" 15
  SERVER_PID=""
}

# RocksDB's memory by kind, MiB, from the server's Prometheus endpoint
# (`block_cache=… memtables=… table_readers=…`; refreshed every second).
storage_mib() { # metrics addr
  python3 - "$1" <<'EOF'
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
kinds = dict(re.findall(r'^tally_storage_memory_bytes\{kind="(\w+)"\} (\S+)$', text, re.M))
kinds.update({f"heap_{kind}": v for kind, v in re.findall(r'^tally_heap_(allocated|resident)_bytes (\S+)$', text, re.M)})
print(" ".join(f"{k}={float(v) / 2**20:.0f}MiB" for k, v in sorted(kinds.items())) or "no-gauges-yet")
EOF
}

loadgen() { # output json, loadgen flags...
  local out=$1
  shift
  "$TALLY" loadgen --server "http://$SERVER_ADDR" --admin-token "$TOKEN" --json "$@" >"$out"
}

# Appends one table row (a JSON object) to $WORK/rows.jsonl.
add_row() { # label, key, compare_with, loadgen json, server rss KiB, extra rss KiB
  python3 - "$@" >>"$WORK/rows.jsonl" <<'EOF'
import json, sys
label, key, compare, report, rss, extra = sys.argv[1:7]
r = json.load(open(report))
print(json.dumps({
    "label": label, "key": key, "compare_with": compare,
    "ious": r["ious"], "ious_per_s": r["ious_per_s"],
    "accepted": r["outcomes"].get("accepted", 0), "outcomes": r["outcomes"],
    "bound": r.get("verify_batch_rate_all_cores"),
    "dalek_bound": r.get("dalek_verify_batch_rate_all_cores"),
    "p50_us": r["batch_latency_us_p50"], "p99_us": r["batch_latency_us_p99"],
    "rss_kib": int(rss or 0), "extra_rss_kib": int(extra or 0),
}))
EOF
}

# One Tally row: a fresh `tally serve`, registration, one loadgen run.
row_tally() { # label, key, compare_with, "serve flags", loadgen flags...
  local label=$1 key=$2 compare=$3 serve_flags=$4
  shift 4
  say "$label"
  # shellcheck disable=SC2086 # serve_flags is a list of words
  start_tally "$WORK/$key" $serve_flags
  loadgen "$WORK/$key/loadgen.json" --register --measure-verify "$@"
  add_row "$label" "$key" "$compare" "$WORK/$key/loadgen.json" "$(kib_of "$SERVER_PID" VmHWM)" 0
  stop_server
}

# One PostgreSQL peer row: the peer on fresh tables, registration, one loadgen run.
row_peer() { # label, key, "peer flags", loadgen flags...
  local label=$1 key=$2 peer_flags=$3
  shift 3
  say "$label"
  # shellcheck disable=SC2086
  start_peer "$WORK/$key" $peer_flags
  loadgen "$WORK/$key/loadgen.json" --register --measure-verify "$@"
  add_row "$label" "$key" "" "$WORK/$key/loadgen.json" "$(kib_of "$SERVER_PID" VmHWM)" "$(postgres_pss_kib)"
  stop_server
}

# The memory run: MEMORY_IOUS into one `tally serve` in chunks of
# MEMORY_CHUNK. Each chunk is pre-signed by loadgen before its clock starts
# (so signing never competes with the server while it is measured, and
# loadgen holds one chunk, not 10M IOUs, in memory); the server's RSS is
# sampled every second throughout, and read after the chunks that reach
# 10 %, 50 % and 100 %, with RocksDB's own accounting (the
# tally_storage_memory_bytes gauges: memtables, block cache, table readers) and
# the heap's size (tally_heap_allocated_bytes, tally_heap_resident_bytes: jemalloc,
# which serves Rust and RocksDB's C++ alike).
row_memory() { # label, key
  local label=$1 key=$2 dir="$WORK/$2" sent=0 chunk=0 register=--register
  say "$label ($MEMORY_IOUS IOUs in chunks of $MEMORY_CHUNK)"
  METRICS_ADDR=127.0.0.1:0 start_tally "$dir"
  local metrics_addr
  metrics_addr=$(json_field "$dir/ready.json" metrics_addr)
  (while kill -0 "$SERVER_PID" 2>/dev/null; do
    echo "$(date +%s) $(kib_of "$SERVER_PID" VmRSS)"
    sleep 1
  done) >"$dir/rss.log" 2>/dev/null &
  SAMPLER_PID=$!
  : >"$dir/marks"
  while [ "$sent" -lt "$MEMORY_IOUS" ]; do
    chunk=$((chunk + 1))
    loadgen "$dir/chunk-$chunk.json" $register --ious "$MEMORY_CHUNK"
    register=""
    sent=$((sent + MEMORY_CHUNK))
    local pct=$((100 * sent / MEMORY_IOUS))
    echo "$pct $sent $(kib_of "$SERVER_PID" VmRSS) $(storage_mib "$metrics_addr")" >>"$dir/marks"
    printf '   %3d %%  %9d IOUs  server RSS %s KiB\n' "$pct" "$sent" "$(kib_of "$SERVER_PID" VmRSS)" >&2
  done
  local hwm
  hwm=$(kib_of "$SERVER_PID" VmHWM)
  python3 - "$dir" "$hwm" "$label" "$key" >>"$WORK/rows.jsonl" <<'EOF'
import glob, json, sys
d, hwm, label, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
reports = [json.load(open(p)) for p in glob.glob(d + "/chunk-*.json")]
answered = sum(r["ious"] for r in reports)
elapsed = sum(r["elapsed_s"] for r in reports)
outcomes = {}
for r in reports:
    for k, v in r["outcomes"].items():
        outcomes[k] = outcomes.get(k, 0) + v
marks = [line.split() for line in open(d + "/marks")]
def rss_at(pct):
    # the first chunk boundary at or past pct % of the run
    return next(int(m[2]) for m in marks if int(m[0]) >= pct)
samples = [int(l.split()[1]) for l in open(d + "/rss.log") if len(l.split()) == 2]
print(json.dumps({
    "label": label, "key": key, "compare_with": "", "memory": True,
    "ious": answered, "ious_per_s": answered / elapsed if elapsed else 0,
    "accepted": outcomes.get("accepted", 0), "outcomes": outcomes, "bound": None,
    "p50_us": max(r["batch_latency_us_p50"] for r in reports),
    "p99_us": max(r["batch_latency_us_p99"] for r in reports),
    "rss_kib": hwm, "extra_rss_kib": 0,
    "rss_at": {"10": rss_at(10), "50": rss_at(50), "100": rss_at(100)},
    "storage_at": {pct: next(" ".join(m[3:]) for m in marks if int(m[0]) >= int(pct)) for pct in ("10", "50", "100")},
    "rss_samples": len(samples), "rss_sampled_max_kib": max(samples or [0]),
    # every chunk boundary: IOUs so far, RSS, and RocksDB's own accounting in MiB
    "chunks": [{"ious": int(m[1]), "rss_kib": int(m[2]),
                "storage_mib": {k: int(v.removesuffix("MiB")) for k, v in (f.split("=") for f in m[3:] if "=" in f)}}
               for m in marks],
}))
EOF
  stop_pid "$SAMPLER_PID" 2
  SAMPLER_PID=""
  stop_server
}

# --- MODES (one line per table row) -------------------------------------------------------
start_postgres
say "PostgreSQL $("${AS_PG[@]}" "$(pg_bin postgres)" --version | awk '{print $3}') on port $PGPORT (pid $PG_PID)"

row_tally "Tally, per-IOU signatures, peak" tally "pg" "" --ious "$IOUS"
PEAK=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ious_per_s"]))' "$WORK/tally/loadgen.json")
HALF=$((PEAK / 2))
# Latency at half of peak: small batches from many streams, paced evenly.
row_tally "Tally, per-IOU, at half of peak ($HALF/s)" half "" "" \
  --rate "$HALF" --ious $((HALF * HALF_SECONDS)) --batch 64 --streams 16 --window 4
row_tally "Tally, ledger only (verification off)" ledger "pg-ledger" "--unsafe-skip-signature-verification" \
  --ious "$IOUS"
row_tally "Tally, batch-signed commitments (1 signature per 1,024 IOUs)" batched "pg" "" --ious "$IOUS" --batch-signed
row_peer "PostgreSQL peer, per-IOU signatures" pg "" --ious "$IOUS"
row_peer "PostgreSQL peer, ledger only (--no-verify)" pg-ledger "--no-verify" --ious "$IOUS"
row_memory "Tally, per-IOU, memory run" memory

# --- The table ----------------------------------------------------------------------------------
say "results ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -m); loadgen and server share the cores)"
python3 - "$WORK/rows.jsonl" "$IOUS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by_key = {r["key"]: r for r in rows}
mib = lambda kib: f"{kib / 1024:,.0f} MiB"
ms = lambda us: f"{us / 1000:,.2f} ms"
header = ["mode", "IOUs", "IOUs/s", "verify bound", "/ bound", "/ dalek bound", "ack p50", "ack p99", "server peak RSS", "vs PostgreSQL"]
table = []
for r in rows:
    bound = r["bound"]
    other = by_key.get(r["compare_with"])
    rss = mib(r["rss_kib"]) + (f" (+ PostgreSQL {mib(r['extra_rss_kib'])} PSS)" if r["extra_rss_kib"] else "")
    table.append([
        r["label"], f"{r['ious']:,}", f"{r['ious_per_s']:,.0f}",
        f"{bound:,.0f}/s" if bound else "—",
        f"{100 * r['ious_per_s'] / bound:.1f} %" if bound else "—",
        f"{100 * r['ious_per_s'] / r['dalek_bound']:.1f} %" if r.get("dalek_bound") else "—",
        ms(r["p50_us"]), ms(r["p99_us"]), rss,
        f"{r['ious_per_s'] / other['ious_per_s']:.2f}×" if other else "—",
    ])
widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
print(line(header))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for t in table:
    print(line(t))
print()
for r in rows:
    if r.get("memory"):
        at = r["rss_at"]
        print(f"memory run: server RSS at 10 % {mib(at['10'])}, 50 % {mib(at['50'])}, 100 % {mib(at['100'])}; "
              f"peak (VmHWM) {mib(r['rss_kib'])}; {r['rss_samples']} one-second samples, max {mib(r['rss_sampled_max_kib'])}")
        for pct, storage in r["storage_at"].items():
            print(f"  memory gauges at {pct} %: {storage}")
        # Memory that is not RocksDB's caches: what would grow with history if anything did.
        print()
        print("| IOUs | server RSS | memtables | block cache | table readers | RSS − RocksDB accounted "
              "| heap allocated (Rust and RocksDB) | heap resident |")
        print("|---|---|---|---|---|---|---|---|")
        rest = []
        for c in r["chunks"]:
            st = c["storage_mib"]
            accounted = sum(st.get(k, 0) for k in ("memtables", "block_cache", "table_readers"))
            rest.append(c["rss_kib"] / 1024 - accounted)
            print(f"| {c['ious']:,} | {mib(c['rss_kib'])} | {st.get('memtables', 0)} MiB | {st.get('block_cache', 0)} MiB "
                  f"| {st.get('table_readers', 0)} MiB | {rest[-1]:,.0f} MiB | {st.get('heap_allocated', '—')} MiB "
                  f"| {st.get('heap_resident', '—')} MiB |")
        half = len(rest) // 2
        if half:
            print(f"RSS − RocksDB accounted: {min(rest[:half]):,.0f}–{max(rest[:half]):,.0f} MiB over the first half, "
                  f"{min(rest[half:]):,.0f}–{max(rest[half:]):,.0f} MiB over the second")
print("ack latency is per batch (loadgen sends a batch, the answer comes after its fsync); "
      "'/ bound' is IOUs/s over the raw batch-verification rate of all cores measured in the same loadgen run "
      "with Tally's verifier (batches of 1024 by the run's payer keys); '/ dalek bound' is the same over "
      "ed25519-dalek's verify_batch on the same signatures.")
# Checks: every IOU accepted, and Tally and its peer accept the same number.
failed = False
for r in rows:
    refused = {k: v for k, v in r["outcomes"].items() if k != "accepted"}
    if refused:
        print(f"CHECK FAILED: {r['label']}: not all IOUs accepted: {refused}")
        failed = True
for r in rows:
    other = by_key.get(r["compare_with"])
    if other and r["accepted"] != other["accepted"]:
        print(f"CHECK FAILED: {r['label']} accepted {r['accepted']:,}, {other['label']} accepted {other['accepted']:,}")
        failed = True
if not failed:
    print("checks: every IOU of every row was accepted; Tally and the PostgreSQL peer accepted the same number.")
sys.exit(1 if failed else 0)
EOF
