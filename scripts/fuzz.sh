#!/usr/bin/env bash
# Runs Tally's cargo-fuzz (libFuzzer) targets for a given time each, one after the other, and prints
# a table: target, executions, seconds, executions per second, crashes.
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]      (default: all targets, 60 s each)
#
# Needs a nightly toolchain (`cargo +nightly`); installs cargo-fuzz from crates.io if it is missing.
# Each target runs as one libFuzzer process (one core). Builds go to their own target dir
# ($TALLY_FUZZ_TARGET_DIR, default ~/.cache/tally-fuzz-target): the sanitizer flags would otherwise
# invalidate the main build cache. New inputs libFuzzer finds accumulate in a working corpus
# ($TALLY_FUZZ_WORK/corpus/TARGET, default ~/.cache/tally-fuzz-work), so the committed seed corpus
# in fuzz/corpus/TARGET stays small. A crashing input is copied to fuzz/regressions/TARGET/, where
# `cargo test --workspace --test fuzz_regressions` replays it; the script then exits 1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir="$root/fuzz"
which=${1:-all}
seconds=${2:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [TARGET|all] [SECONDS]" >&2
    exit 2
fi

export CARGO_TARGET_DIR=${TALLY_FUZZ_TARGET_DIR:-$HOME/.cache/tally-fuzz-target}
work=${TALLY_FUZZ_WORK:-$HOME/.cache/tally-fuzz-work}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mapfile -t all_targets < <(cd "$fuzz_dir/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//' | sort)
if [[ "$which" == all ]]; then
    targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $which "* ]]; then
    targets=("$which")
else
    echo "fuzz.sh: unknown target '$which' (targets: ${all_targets[*]})" >&2
    exit 2
fi

cd "$fuzz_dir"
echo "fuzz.sh: building ${targets[*]} (target dir $CARGO_TARGET_DIR)" >&2
for target in "${targets[@]}"; do
    cargo +nightly fuzz build "$target" >&2
done

rows=()
crashed=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    artifacts="$fuzz_dir/artifacts/$target"
    regressions="$fuzz_dir/regressions/$target"
    log="$work/logs/$target.log"
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    before=$(mktemp)
    ls "$artifacts" | sort > "$before"

    echo "fuzz.sh: running $target for ${seconds}s (log $log)" >&2
    start_s=$(date +%s)
    status=0
    # The working corpus comes first: libFuzzer writes new inputs only to the first directory.
    cargo +nightly fuzz run "$target" "$corpus" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    elapsed_s=$(($(date +%s) - start_s))

    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    new_artifacts=$(ls "$artifacts" | sort | comm -13 "$before" - | grep -E '^(crash|timeout|oom|leak|slow-unit)-' || true)
    rm -f "$before"
    crashes=0
    if [[ -n "$new_artifacts" ]]; then
        mkdir -p "$regressions"
        while read -r name; do
            cp "$artifacts/$name" "$regressions/$name"
            echo "fuzz.sh: $target: $name kept in fuzz/regressions/$target/ (see $log)" >&2
            crashes=$((crashes + 1))
        done <<<"$new_artifacts"
    elif [[ "$status" -ne 0 ]]; then
        echo "fuzz.sh: $target exited $status without an artifact; see $log" >&2
        tail -20 "$log" >&2
        crashes=1
    fi
    ((crashes > 0)) && crashed=1
    rows+=("$target ${executions:-?} $elapsed_s ${per_second:-?} $crashes")
done

printf '\n%-18s %14s %8s %10s %8s\n' target executions seconds execs/s crashes
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-18s %14s %8s %10s %8s\n' $row
done
exit "$crashed"
