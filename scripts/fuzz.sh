#!/usr/bin/env bash
# Runs newt's fuzz targets (fuzz/: cargo-fuzz, libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh TARGET SECONDS   fuzz one target for SECONDS
#   scripts/fuzz.sh all SECONDS      fuzz every target in turn, SECONDS each
#   scripts/fuzz.sh build            build every target (what the first run does)
#   scripts/fuzz.sh list             the targets
#
# Needs no nightly toolchain: stable Rust with RUSTC_BOOTSTRAP=1 takes
# -Zsanitizer=address. Installs cargo-fuzz when it is missing. Builds go to fuzz/target
# (NEWT_FUZZ_TARGET_DIR moves them, e.g. to a cache kept between CI runs); a target's
# corpus is fuzz/corpus/TARGET, seeded from newt's own fixtures at every start (see
# fuzz/src/seeds.rs); crashes are saved under fuzz/artifacts/TARGET; each run's output
# is in fuzz/logs/TARGET.log. Prints one line per target (runs, and whether it
# crashed) and exits non-zero when any target crashed or failed to run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

targets=(bundle_targz bundle_tar bundle_zip agent_frames deploy_params seed_bodies names)
target_dir="${NEWT_FUZZ_TARGET_DIR:-$root/fuzz/target}"
export RUSTC_BOOTSTRAP=1

usage() {
    echo "usage: $0 TARGET|all SECONDS | build | list" >&2
    echo "targets: ${targets[*]}" >&2
    exit 2
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz" >&2
        cargo install cargo-fuzz --locked
    fi
}

build() {
    ensure_cargo_fuzz
    (cd fuzz && cargo fuzz build --target-dir "$target_dir")
}

# fuzz TARGET SECONDS: runs one target; prints its summary line; fails on a crash.
fuzz() {
    local target="$1" seconds="$2"
    local corpus="$root/fuzz/corpus/$target" log="$root/fuzz/logs/$target.log"
    mkdir -p "$corpus" "$root/fuzz/logs"
    local status=0
    (cd fuzz && NEWT_FUZZ_SEEDS="$corpus" cargo fuzz run --target-dir "$target_dir" \
        "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1) \
        >"$log" 2>&1 || status=$?
    local runs
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    if [[ $status -eq 0 ]]; then
        echo "fuzz $target: ${runs:-?} runs in ${seconds}s, no crash"
    else
        echo "fuzz $target: CRASH or failure (exit $status) after ${runs:-?} runs; log $log:" >&2
        grep -E "^(thread '|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written|error)" "$log" \
            | head -n 20 >&2 || tail -n 40 "$log" >&2
        return 1
    fi
}

case "${1:-}" in
list)
    printf '%s\n' "${targets[@]}"
    ;;
build)
    build
    ;;
all)
    [[ $# -eq 2 ]] || usage
    build
    failed=0
    for target in "${targets[@]}"; do
        fuzz "$target" "$2" || failed=1
    done
    exit "$failed"
    ;;
"")
    usage
    ;;
*)
    [[ $# -eq 2 ]] || usage
    [[ " ${targets[*]} " == *" $1 "* ]] || usage
    ensure_cargo_fuzz
    fuzz "$1" "$2"
    ;;
esac
