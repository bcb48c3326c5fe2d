#!/usr/bin/env bash
# The CPU-scale reproduction (docs/results.md): every spec in specs/repro/ trained into one store
# by two 1-thread workers (a 2-core machine). Both workers walk the whole list, in different
# orders; the store's leases make each step run once, and a worker skips steps the other holds.
# Re-running resumes: finished steps are cached.
#   bash bench/repro.sh [STORE]        # default runs/repro; timings in STORE.timing.tsv
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-runs/repro}
LOG="$STORE.timing.tsv"
mkdir -p "$(dirname "$STORE")"
S=specs/repro
A=(q0 q0-logit q0-uniform q0-flatwd q0-noperturb q0-synthetic single-synthetic-8x single-synthetic-4x)
B=(single ensemble q0-p4 q0-p2 q0-nodistill single-synthetic ensemble-synthetic single-synthetic-2x)
worker() {  # name, specs...
  local name=$1; shift
  for spec in "$@" "${A[@]}" "${B[@]}"; do
    local t0; t0=$(date +%s)
    hepc run "$S/$spec.yaml" --store "$STORE" >>"$STORE.$name.log" 2>&1 || { echo "worker $name: $spec failed, see $STORE.$name.log" >&2; return 1; }
    printf '%s\t%s\t%s\t%s\n' "$name" "$spec" "$t0" "$(date +%s)" >>"$LOG"
  done
}
start=$(date +%s)
printf 'worker\tspec\tstart\tend\n' >"$LOG"
worker a "${A[@]}" & pa=$!
worker b "${B[@]}" & pb=$!
rc=0; wait $pa || rc=1; wait $pb || rc=1
printf 'all\twall\t%s\t%s\n' "$start" "$(date +%s)" >>"$LOG"
echo "reproduction finished in $(( $(date +%s) - start )) s (rc $rc); timings in $LOG"
exit $rc
