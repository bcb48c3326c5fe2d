#!/usr/bin/env bash
# The CPU-scale reproduction, protocol v2 (docs/results.md, docs/repro-notes.md): every spec in
# specs/repro/ trained into one store by two 1-thread workers (a 2-core machine), then every figure
# written by bench/repro_summary.py (docs/results/summary.json, the plots, docs/results.md).
# Both workers walk the whole list in different orders; the store's leases make each step run once
# and a worker skips steps the other holds. Re-running resumes: finished steps are cached.
#   bash bench/repro.sh [STORE]        # default runs/repro; per-spec timings in STORE.timing.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-runs/repro}
LOG="$STORE.timing.tsv"
PY=${PYTHON:-python}
mkdir -p "$(dirname "$STORE")"
S=specs/repro
# The headline first (three q0 seeds of 64 cycles, then the 24-member baseline, both workers on
# each), then the ablations and the data-efficiency sweeps; the specs that only refit priors on
# existing snapshots come last.
A=(q0 ensemble-24 q0-flatwd single-8x single q0-p2 q0-noperturb single-2x)
B=(q0 ensemble-24 q0-nodistill single-4x q0-p4 q0-flatwd single-2x)
LAST=(ensemble q0-8s q0-learned q0-uniform)
worker() {  # name, specs...
  local name=$1; shift
  for spec in "$@" "${A[@]}" "${B[@]}" "${LAST[@]}"; do
    local t0; t0=$(date +%s)
    $PY -m hepc.cli run "$S/$spec.yaml" --store "$STORE" --quiet >>"$STORE.$name.log" 2>&1 \
      || { echo "worker $name: $spec failed, see $STORE.$name.log" >&2; return 1; }
    printf '%s\t%s\t%s\t%s\n' "$name" "$spec" "$t0" "$(date +%s)" >>"$LOG"
  done
}
start=$(date +%s)
printf 'worker\tspec\tstart\tend\n' >"$LOG"
worker a "${A[@]}" & pa=$!
worker b "${B[@]}" & pb=$!
rc=0; wait $pa || rc=1; wait $pb || rc=1
printf 'all\twall\t%s\t%s\n' "$start" "$(date +%s)" >>"$LOG"
echo "training finished in $(( $(date +%s) - start )) s (rc $rc); timings in $LOG"
[ $rc -eq 0 ] || exit $rc
$PY bench/repro_summary.py --store "$STORE" --timing "$LOG"
