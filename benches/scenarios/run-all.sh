#!/usr/bin/env bash
# Runs every case study in turn (the full versions; --short for the seconds-long versions CI
# runs), each in its own network namespaces, and prints their verdicts. Results (CSV, logs,
# plot.png, figures.txt, verdict.txt) go to $SCENARIO_OUT (default benches/scenarios/results),
# one folder per scenario. Exit status: the number of scenarios that failed (0 = all passed).
#
#   sudo benches/scenarios/run-all.sh            # full versions (a few minutes)
#   sudo benches/scenarios/run-all.sh --short    # short versions (well under 2 minutes)
#   sudo benches/scenarios/run-all.sh --short 1 2   # some of them
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ ${1:-} == --short ]]; then
    export SCENARIO_SHORT=1
    shift
fi
out=${SCENARIO_OUT:-$here/results}
export SCENARIO_OUT=$out
mkdir -p "$out"

# Build once (release), then let every scenario use the binaries as they are.
target=${CARGO_TARGET_DIR:-$here/../../target}
if [[ -z ${SERVAL_TRANSLATOR:-} || -z ${SCENARIO_LOAD:-} ]]; then
    (cd "$here/../.." && cargo build -q --release -p translator -p serval-benches --bin serval-translator --bin scenario_load)
fi
export SERVAL_TRANSLATOR=${SERVAL_TRANSLATOR:-$target/release/serval-translator}
export SCENARIO_LOAD=${SCENARIO_LOAD:-$target/release/scenario_load}

all=(1-storage 2-replicas 3-client-migration 4-server-migration 5-nic-balance)
pick=()
if (($#)); then
    for n in "$@"; do
        for s in "${all[@]}"; do [[ $s == "$n"* ]] && pick+=("$s"); done
    done
else
    pick=("${all[@]}")
fi

failed=0
verdicts=()
for s in "${pick[@]}"; do
    start=$SECONDS
    if timeout --kill-after=10 600 "$here/$s.sh" >"$out/$s.out" 2>&1; then :; else
        failed=$((failed + 1))
    fi
    v=$(grep -E '^(PASS|FAIL) ' "$out/$s.out" | tail -1 || true)
    [[ -n $v ]] || v="FAIL $s: $(grep -E 'ERROR' "$out/$s.out" | tail -1 || echo "no verdict, see $out/$s.out")"
    verdicts+=("$v ($((SECONDS - start))s)")
    echo "${verdicts[-1]}"
done
echo
echo "=== case studies: $((${#pick[@]} - failed))/${#pick[@]} passed; results in $out"
exit "$failed"
