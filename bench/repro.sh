#!/usr/bin/env bash
# The CPU-scale reproduction, protocol v3 (docs/results.md, docs/repro-notes.md): every spec under
# specs/repro/ trained into one store by two 1-thread workers (a 2-core machine), then every figure
# written by bench/repro_summary.py (docs/results/summary.json, the plots, docs/results.md).
# Both workers walk the whole list, in different orders; the store's leases make each step run once
# and a worker skips steps the other holds. Re-running resumes: finished steps are cached, an
# interrupted cycle resumes from its checkpoint (stop it any time with Ctrl-C or kill; run it again).
#   bash bench/repro.sh [STORE]            # everything (default store runs/repro); timings in STORE.timing.tsv
#   bash bench/repro.sh --quick [STORE]    # scale B's headline on seeds 100 and 200 only, then checks that its
#                                          # figures equal the "quick" block of docs/results/summary.json
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
STORE=${1:-runs/repro}
LOG="$STORE.timing.tsv"
PY=${PYTHON:-python}
mkdir -p "$(dirname "$STORE")"
S=specs/repro
HEADLINE=(a/q0 b/q0 a/ens-1s a/ens-1.5s a/ens-2s a/ens-3s a/ens-4s a/single b/ens-1s b/ens-1.5s b/ens-2s b/ens-3s b/ens-4s b/single)
REST=(a/q0-h5 a/abl-flatwd a/abl-noperturb a/abl-perturb2x a/abl-alpha0 a/abl-p2 a/abl-p4)
DATA=()
for f in "$S"/data/*.yaml; do DATA+=("data/$(basename "$f" .yaml)"); done
OVERRIDES=()
if [ $QUICK = 1 ]; then
  HEADLINE=(b/q0 b/ens-1s b/ens-1.5s b/ens-2s b/ens-3s b/ens-4s); REST=(); DATA=()
  OVERRIDES=("sweep.seed=[100,200]")
fi
ALL=("${HEADLINE[@]}" "${REST[@]}" "${DATA[@]}")
reversed=()
for ((i=${#ALL[@]}-1; i>=0; i--)); do reversed+=("${ALL[$i]}"); done
worker() {  # name, specs...
  local name=$1; shift
  for spec in "$@"; do
    local t0; t0=$(date +%s)
    $PY -m hepc.cli run "$S/$spec.yaml" "${OVERRIDES[@]}" --store "$STORE" --quiet >>"$STORE.$name.log" 2>&1 \
      || { echo "worker $name: $spec failed, see $STORE.$name.log" >&2; return 1; }
    printf '%s\t%s\t%s\t%s\n' "$name" "$spec" "$t0" "$(date +%s)" >>"$LOG"
  done
}
start=$(date +%s)
[ -f "$LOG" ] || printf 'worker\tspec\tstart\tend\n' >"$LOG"
# worker a: the list in order; worker b: the headline first too, then the rest from the end
worker a "${ALL[@]}" & pa=$!
worker b "${HEADLINE[@]}" "${reversed[@]}" & pb=$!
rc=0; wait $pa || rc=1; wait $pb || rc=1
printf 'all\twall\t%s\t%s\n' "$start" "$(date +%s)" >>"$LOG"
echo "training finished in $(( $(date +%s) - start )) s (rc $rc); timings in $LOG"
[ $rc -eq 0 ] || exit $rc
if [ $QUICK = 1 ]; then
  exec $PY bench/repro_summary.py --store "$STORE" --quick
fi
$PY bench/repro_summary.py --store "$STORE" --timing "$LOG"
