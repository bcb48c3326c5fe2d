#!/usr/bin/env bash
# GPU benchmark: training tokens/s, peak memory and MFU per GPU, in one go on a machine with NVIDIA GPUs.
#   bash bench/gpu.sh [--compile] [--only small|paper] [--peak-tflops X] [--keep]
# Time: bounded. The small runs (a-c): expected about 3 minutes on one H200, about 5 with --compile;
# the paper's shape (d): expected 6-12 minutes (estimates from the token counts, not yet measured).
# Every run is capped with `timeout` (quickstart 120 s, gpt-85m 180 s, gpt-85m compiled 210 s, each
# paper-shape run 420 s), so it ends within 37 minutes on any GPU: a small run that hits its cap is
# stopped at a checkpoint (SIGTERM) and reported from the cycles it finished; a paper-shape run that
# hits it reports nothing.
#
# With G = the visible GPUs (CUDA_VISIBLE_DEVICES narrows them), each run uses --jobs G, one worker
# per GPU, into a fresh store under /tmp:
#   (a) quickstart   specs/quickstart.yaml (0.87M-parameter byte GPT, 128-token context), on cuda in
#                    bfloat16, max(2, G) trajectories × 4 cycles
#   (b) gpt-85m      specs/bench/gpt-85m.yaml: GPT-2 small's shape (12 × 768 × 12 heads, 1,024 context)
#                    with the bytes vocabulary: 85.3M parameters (hepc.sizes; not 124M, see the spec),
#                    G trajectories × 2 cycles × 8.26M tokens, batch 32 × 1,024 tokens, bfloat16
#   (c) --compile    (b) again with runtime.compile=true, in its own store (runtime never enters a key,
#                    so the same store would just hand back (b)'s cycles)
#   (d) the paper's shape (bench/gpu_paper.py): specs/paper-1.8b.yaml's architecture (d_model 2048,
#                    16 heads, 2,048-token context, vocabulary 50,257, dropout 0.1, Muon, batch 524,288
#                    tokens) at 4 layers on synthetic tokens: a plain cycle then a distilled one, 5 steps
#                    each, through hepc's training loop (bf16, micro-batches chosen by hepc, chunked
#                    loss), eager and compiled, on 1 GPU and data-parallel on all G (gpus_per_step = G)
# Then bench/gpu_report.py prints, per GPU: tokens/s over whole cycles and in steady state, and MFU =
# model FLOPs per token × tokens/s per GPU / peak bf16 dense FLOP/s (model FLOPs: 6 per weight of the
# blocks and the head, the input embedding excluded, attention 12·L·d·T, a distilled cycle's teacher
# forward; peak looked up by GPU name: H100 SXM and H200 989 TFLOP/s, A100 312; --peak-tflops X
# overrides), and (c)'s steady tokens/s against (b)'s; and (d) prints per run and cycle kind tokens/s,
# tokens/s per GPU, MFU on the same basis, and GPU 0's peak memory next to hepc's estimate.
# The last lines are JSON. --keep keeps the stores and logs (they are kept anyway when a run fails).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
COMPILE=0 KEEP=0 PEAK=() ONLY=all
while [ $# -gt 0 ]; do
  case $1 in
    --compile) COMPILE=1 ;;
    --keep) KEEP=1 ;;
    --only) [ $# -ge 2 ] && [[ $2 == small || $2 == paper ]] || { echo "error: --only needs small or paper" >&2; exit 2; }; ONLY=$2; shift ;;
    --peak-tflops) [ $# -ge 2 ] || { echo "error: --peak-tflops needs a value" >&2; exit 2; }; PEAK=(--peak-tflops "$2"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (bash bench/gpu.sh [--compile] [--only small|paper] [--peak-tflops X] [--keep])" >&2; exit 2 ;;
  esac
  shift
done

# ---- fail fast without NVIDIA GPUs and a CUDA build of torch -------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || {
  echo "error: bench/gpu.sh needs NVIDIA GPUs: nvidia-smi is not on PATH (no NVIDIA driver here); nothing was run" >&2
  exit 2
}
if ! GPUS=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$GPUS"; then
  echo "error: nvidia-smi lists no GPU: ${GPUS:-no output}; nothing was run" >&2
  exit 2
fi
G=$($PY - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("error: torch is not installed; nothing was run")
if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA device (a CPU-only build, a driver that is too old, "
             "or CUDA_VISIBLE_DEVICES hides them); nothing was run")
if not torch.cuda.is_bf16_supported():
    print(f"warning: {torch.cuda.get_device_name(0)} has no bfloat16: the runs will be slow and MFU meaningless",
          file=sys.stderr)
print(torch.cuda.device_count())
EOF
) || exit 2

BASE=$(mktemp -d /tmp/hepc-bench-gpu-XXXXXX)
FAILED=0
cleanup() { if [ "$KEEP" = 1 ] || [ "$FAILED" = 1 ]; then echo "stores and logs kept in $BASE" >&2; else rm -rf "$BASE"; fi; }
trap cleanup EXIT

echo "GPUs visible to torch: $G"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/  /'
$PY -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')"
echo "stores under $BASE"

run() {  # label, time limit (s), spec, overrides...
  local label=$1 limit=$2 spec=$3; shift 3
  local t0 rc=0; t0=$(date +%s)
  echo "$(date +%T) $label: hepc run $spec $* --jobs $G (limit ${limit}s)"
  timeout --signal=TERM --kill-after=30 "$limit" \
    $PY -m hepc.cli run "$spec" "$@" --jobs "$G" --store "$BASE/$label" --quiet >"$BASE/$label.out" 2>"$BASE/$label.log" \
    || rc=$?
  case $rc in
    0) echo "$(date +%T) $label: done in $(( $(date +%s) - t0 )) s" ;;
    124|130|137) echo "$(date +%T) $label: stopped at its ${limit}s limit: reporting the cycles it finished" ;;
    *) FAILED=1; echo "$(date +%T) $label: failed (exit $rc); last lines of $BASE/$label.log:" >&2
       tail -n 20 "$BASE/$label.log" >&2 ;;
  esac
}

if [ "$ONLY" != paper ]; then
  QT=$(( G > 2 ? G : 2 ))
  run quickstart 120 specs/quickstart.yaml runtime.device=cuda runtime.dtype=bfloat16 "population.trajectories=$QT"
  run gpt-85m 180 specs/bench/gpt-85m.yaml "population.trajectories=$G"
  STORES=("quickstart=$BASE/quickstart" "gpt-85m=$BASE/gpt-85m")
  if [ "$COMPILE" = 1 ]; then
    run gpt-85m-compile 210 specs/bench/gpt-85m.yaml "population.trajectories=$G" runtime.compile=true
    STORES+=("gpt-85m-compile=$BASE/gpt-85m-compile")
  fi
  present=()
  for s in "${STORES[@]}"; do [ -d "${s#*=}/objects" ] && present+=("$s"); done
  [ ${#present[@]} -gt 0 ] || { FAILED=1; echo "error: no run committed anything" >&2; exit 1; }
  $PY bench/gpu_report.py "${present[@]}" "${PEAK[@]}"
fi

if [ "$ONLY" != small ]; then  # (d) the paper's shape: 1 GPU and all G, eager and compiled
  counts=(1); [ "$G" -gt 1 ] && counts+=("$G")
  for gpus in "${counts[@]}"; do
    for mode in eager compiled; do
      label="paper-${gpus}gpu-$mode" flag=(); [ $mode = compiled ] && flag=(--compile)
      echo "$(date +%T) $label: bench/gpu_paper.py --gpus $gpus ${flag[*]} (limit 420s)"
      if timeout --signal=TERM --kill-after=30 420 $PY bench/gpu_paper.py --gpus "$gpus" "${flag[@]}" "${PEAK[@]}" \
          >"$BASE/$label.out" 2>"$BASE/$label.log"; then
        grep -v '^{' "$BASE/$label.out" || true
        tail -n 1 "$BASE/$label.out"
      else
        FAILED=1; echo "$(date +%T) $label: failed or stopped at its limit; last lines of $BASE/$label.log:" >&2
        tail -n 20 "$BASE/$label.log" >&2
      fi
    done
  done
fi
exit $FAILED
