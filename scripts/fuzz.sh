#!/usr/bin/env bash
# The fuzzing campaign: runs every cargo-fuzz target of the project for a given time and
# records what each run did (executions, coverage, corpus size, crashes) in one summary.
#
#   scripts/fuzz.sh [--seconds N] [--jobs J] [--crate DIR] [--only NAME] [--summary FILE]
#
# --seconds  wall time per target (default 1800: the hardening campaign's 30 minutes)
# --jobs     targets run at once (default 1); each is one libFuzzer process at nice 19, so a
#            long campaign can share the machine with other work
# --crate    only the fuzz crate under DIR (serval-stack or translator)
# --only     run only targets whose name contains NAME
# --summary  where the Markdown table goes (default target/fuzz-campaign.md)
#
# Each target runs on a scratch copy of its checked-in corpus (serval-stack/fuzz/corpus/T,
# translator/fuzz/corpus/T); new inputs stay in target/fuzz-work/T for `cargo fuzz cmin`.
# Crashes land in target/fuzz-work/T/artifacts; the script exits 1 if any target crashed.
# The toolchain here is stable: RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds=1800 jobs=1 only="" crate_only="" summary="$root/target/fuzz-campaign.md"
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --crate) crate_only="$2"; shift 2 ;;
        --summary) summary="$2"; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--jobs J] [--crate DIR] [--only NAME] [--summary FILE]" >&2; exit 2 ;;
    esac
done
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
work="$root/target/fuzz-work"
mkdir -p "$work" "$(dirname "$summary")"

# Every fuzz crate of the repository: a directory holding fuzz/Cargo.toml.
crates=()
for dir in "$root/serval-stack" "$root/translator"; do
    [[ -n "$crate_only" && "$dir" != "$root/$crate_only" ]] && continue
    [[ -f "$dir/fuzz/Cargo.toml" ]] && crates+=("$dir")
done

targets=()
for crate in "${crates[@]}"; do
    (cd "$crate" && cargo fuzz build -O >/dev/null)
    for t in $(cd "$crate" && cargo fuzz list); do
        [[ -z "$only" || "$t" == *"$only"* ]] && targets+=("$crate:$t")
    done
done

run_one() {
    local crate="${1%%:*}" t="${1##*:}"
    local dir="$work/$t"
    rm -rf "$dir"; mkdir -p "$dir/corpus" "$dir/artifacts"
    cp -r "$crate/fuzz/corpus/$t/." "$dir/corpus/" 2>/dev/null || true
    (cd "$crate" && nice -n 19 cargo fuzz run -O "$t" "$dir/corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/") >"$dir/log" 2>&1 || echo "exit $?" >>"$dir/log"
}

running=0
for spec in "${targets[@]}"; do
    run_one "$spec" &
    running=$((running + 1))
    if ((running >= jobs)); then wait -n || true; running=$((running - 1)); fi
done
wait

crashed=0
{
    echo "| target | seconds | executions | exec/s | coverage (edges) | features | corpus | crashes |"
    echo "|---|---|---|---|---|---|---|---|"
    for spec in "${targets[@]}"; do
        t="${spec##*:}" dir="$work/${spec##*:}"
        runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$dir/log" | grep -oE '[0-9]+$' || echo "?")
        speed=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$dir/log" | grep -oE '[0-9]+$' || echo "?")
        last=$(grep -E '^#[0-9]+' "$dir/log" | tail -1)
        cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
        ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
        corp=$(grep -oE 'corp: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo "?")
        crate="${spec%%:*}"
        # cargo-fuzz passes its own -artifact_prefix too; look in both places.
        crashes=$(find "$dir/artifacts" "$crate/fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
        ((crashes)) && crashed=1
        echo "| $t | $seconds | $runs | $speed | $cov | $ft | $corp | $crashes |"
    done
} | tee "$summary"
echo "summary: $summary; logs and new inputs: $work"
exit "$crashed"
