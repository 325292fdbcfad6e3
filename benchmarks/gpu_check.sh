#!/usr/bin/env bash
# Issue 18's GPU checks in one run, for a session that is lent a GPU (docs/benchmarks.md, "GPU check").
#
#   here, once:      bash benchmarks/gpu_check_prepare.sh        (wheels the device image lacks -> .gpu_check/)
#   device call 1:   bash benchmarks/gpu_check.sh stage          carry [".gpu_check/ray1"]   (the machine stays
#                    warm ~30 s: make call 2 at once; without it, the Ray parts are skipped and said so)
#   device call 2:   bash benchmarks/gpu_check.sh                carry [".gpu_check/ray2", ".gpu_check/base"],
#                    timeout_s 600
#
# Parts (each under its own time limit, so the table always prints; a part that cannot run says why):
#   merge   the fused CUDA TIES / DARE-TIES against a device copy (the bound), 10 experts x 4096x4096 fp32
#   model   benchmarks/model_scale.py at the 1b size (Llama-3.2-1B shapes, bf16, 10 rank-8 experts, population
#           10) with the actors on the GPU: GENOME and Model Swarms rounds, registry merge, a scale cell
#           (Ray), and the stacked-candidate evaluator (10 candidates, one pass) against the naive
#           save-reload-evaluate loop (no Ray needed)
#   tests   the test modules and tests that skip without CUDA (pytest -m '')
# Everything lands in $OUT (the device tool returns it); the last lines are the table
# (benchmarks/model_scale_gpu_table.py), also in $OUT/table.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/gpu_check_stage
if [ "${1:-}" = stage ]; then
  mkdir -p "$STAGE" && cp .gpu_check/ray1/* "$STAGE"/ && ls -la "$STAGE"
  exit 0
fi
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # a throwaway local cluster
PY=${PYTHON:-python3}
SITE=/tmp/gpu_check_site
mkdir -p "$SITE"
T0=$(date +%s)
echo "== gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# ---- the packages the image lacks (gpu_check_prepare.sh), installed beside it, never over it
if ls .gpu_check/base/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu_check/base/*.whl
fi
if [ -f "$STAGE/ray.tar.gz.part00" ] && [ -f .gpu_check/ray2/ray.tar.gz.part01 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$STAGE"/*.whl
  cat "$STAGE/ray.tar.gz.part00" .gpu_check/ray2/ray.tar.gz.part01 | tar -C "$SITE" -xzf -
  find "$SITE/ray/core" -type f -exec chmod a+x {} +  # zipfile -e dropped the wheel's exec bits (gcs_server, raylet)
fi
export PYTHONPATH="$PWD:$SITE"
$PY - <<'EOF' | tee "$OUT/env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
for m in ("triton", "transformers", "peft", "pydantic", "datasets", "ray"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # reported, the parts that need it are skipped
        print(m, "MISSING", type(e).__name__)
EOF
HAVE_RAY=0; $PY -c "import ray" 2>/dev/null && HAVE_RAY=1

status() { echo "$1 $2" >> "$OUT/status.txt"; }
: > "$OUT/status.txt"

# ---- merge: fused kernels vs the copy bound (each timing in its own process: CUDA start + Triton JIT)
echo "== merge kernels $(($(date +%s) - T0)) s"
timeout ${MERGE_S:-180} $PY benchmarks/merge_throughput.py --device cuda --size 4096 --experts 10 --rounds 1 --repeats 3 \
  --json > "$OUT/merge.txt"
status merge $?
cat "$OUT/merge.txt"

# ---- tests that skip without CUDA (short: before the long model parts)
echo "== GPU tests $(($(date +%s) - T0)) s"
timeout ${TESTS_S:-60} $PY -m pytest -m '' -q -p no:cacheprovider -o addopts='' \
  tests/test_merging_kernels.py tests/test_evolve_gpu.py \
  "tests/test_evaluation_evaluator.py::test_cuda_scores_match_cpu" \
  "tests/test_merging_contract.py::test_runs_on_cuda_like_on_cpu" \
  "tests/test_merging_options.py::test_fast_mask_on_cuda" \
  "tests/test_search_operators.py::test_results_stay_on_the_parents_device" \
  -rs > "$OUT/tests.txt" 2>&1
status tests $?
tail -n 25 "$OUT/tests.txt"

# ---- model, the 1b size: first the stacked evaluator vs the naive loop (no Ray), then the actors
# on the GPU (Ray) in a second process, so a slow part cannot take the other's result with it
echo "== model_scale 1b, stacked evaluator vs naive loop $(($(date +%s) - T0)) s"
timeout ${NAIVE_S:-90} $PY benchmarks/model_scale.py --size 1b --device cuda --space ab --naive 4 --phases naive \
  --json "$OUT/model_scale_1b_naive.json" > "$OUT/model_scale_1b_naive.txt"
status model_naive $?
cat "$OUT/model_scale_1b_naive.txt"
if [ "$HAVE_RAY" = 1 ]; then
  echo "== model_scale 1b, actors on the GPU $(($(date +%s) - T0)) s"
  timeout ${ACTORS_S:-160} $PY benchmarks/model_scale.py --size 1b --device cuda --gpus-per-actor 1 --threads 4 \
    --space ab --naive 0 --phases genome,swarm,scale --json "$OUT/model_scale_1b.json" > "$OUT/model_scale_1b.txt"
  status model $?
  cat "$OUT/model_scale_1b.txt"
else
  status model_actors "skipped: no Ray on this machine (run the stage call first)"
fi

echo "== table $(($(date +%s) - T0)) s"
$PY benchmarks/model_scale_gpu_table.py "$OUT" | tee "$OUT/table.txt"
