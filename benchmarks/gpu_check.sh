#!/usr/bin/env bash
# Issue 18's GPU checks in one run, for a session that is lent a GPU (docs/benchmarks.md, "GPU check").
#
#   here, once:      bash benchmarks/gpu_check_prepare.sh        (wheels the device image lacks -> .gpu_check/)
#   device call 1:   bash benchmarks/gpu_check.sh stage          carry [".gpu_check/ray1"]   (the machine stays
#                    warm ~30 s: make call 2 at once; without it, the Ray parts are skipped and said so)
#   device call 2:   bash benchmarks/gpu_check.sh                carry [".gpu_check/ray2", ".gpu_check/base"],
#                    timeout_s 600
#   dry run here:    GPU_CHECK_DEVICE=cpu OUT=/tmp/gc bash benchmarks/gpu_check.sh   (tiny sizes, the same commands)
#
# Parts, in this order, each under its own time limit so that the table always prints. The plan
# is the first device runs (2026-11-27, H200, 77de5a2 + gpu_check fixes), in brackets:
#   setup      wheels + Ray tar installed beside the image's packages              [27 s]
#   merge      MERGE_S 60: merge_throughput.py --ops target in one process (copy, fused TIES / DARE-TIES,
#              peft's two), 10 experts x 4096x4096 fp32; the first call of each compiles its Triton kernels
#                                                                  [was ten processes: killed at 90 and 180 s]
#   tests      TESTS_S 60: the 36 CUDA-only tests without Ray (merging kernels, evaluator, contract,
#              options, search operators)                          [36 passed in 41 s, run 1]
#   tests_ray  TESTS_RAY_S 100: tests/test_evolve_gpu.py (two Ray runs on GPU actors)
#                                         [genome passed; swarm killed at the shared 60 s limit, run 2]
#   naive      NAIVE_S 140: model_scale.py 1b --phases naive --naive 10: writes the 1b files once into
#              $WS (build 39 s), then the stacked evaluator on the 10 experts against the naive loop
#              (base reloaded from disk per candidate, and deep-copied)   [4 candidates, build included: 65 s]
#   actors     ACTORS_S 115: model_scale.py 1b --phases genome,swarm,scale on GPU actors, reusing $WS
#              (JSON written after each phase: a limit keeps the finished ones)   [killed at 160 s, build 39 s]
# Limits: 60 + 60 + 100 + 140 + 115 = 475 s (each part SIGKILLed 10 s after its SIGTERM: Ray traps
# SIGTERM), plus the setup: inside one 600 s call.
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
DEV=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEV" = cuda ]; then SIZE=1b; MSIZE=4096; GPA=1; THREADS=4; else SIZE=tiny; MSIZE=256; GPA=0; THREADS=1; fi
WS=${GPU_CHECK_WS:-/tmp/gpu_check_ws_$SIZE}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # a throwaway local cluster
PY=${PYTHON:-python3}
SITE=/tmp/gpu_check_site
mkdir -p "$SITE"
T0=$(date +%s)
echo "== gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') device $DEV size $SIZE"
if [ "$DEV" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
else
  echo "cpu dry run ($(nproc) CPUs)" | tee "$OUT/gpu.txt"
fi

# ---- the packages the image lacks (gpu_check_prepare.sh), installed beside it, never over it
# (not in a CPU dry run: they are cp312 wheels for the device image)
if [ "$DEV" = cuda ] && ls .gpu_check/base/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu_check/base/*.whl
fi
if [ "$DEV" = cuda ] && [ -f "$STAGE/ray.tar.gz.part00" ] && [ -f .gpu_check/ray2/ray.tar.gz.part01 ]; then
  $PY -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$STAGE"/*.whl
  cat "$STAGE/ray.tar.gz.part00" .gpu_check/ray2/ray.tar.gz.part01 | tar -C "$SITE" -xzf -
  find "$SITE/ray/core" -type f -exec chmod a+x {} +  # zipfile -e dropped the wheel's exec bits (gcs_server, raylet)
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'EOF' | tee "$OUT/env.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for m in ("triton", "transformers", "peft", "pydantic", "datasets", "ray"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # reported, the parts that need it are skipped
        print(m, "MISSING", type(e).__name__)
EOF
HAVE_RAY=0; $PY -c "import ray" 2>/dev/null && HAVE_RAY=1

status() { echo "$1 $2" >> "$OUT/status.txt"; }
: > "$OUT/status.txt"
part() { echo "== $1 $(($(date +%s) - T0)) s"; }

# ---- merge: fused kernels vs the copy bound, one process (imports, CUDA start and Triton load once)
part "merge kernels"
timeout -k 10 ${MERGE_S:-60} $PY benchmarks/merge_throughput.py --device "$DEV" --size $MSIZE --experts 10 --rounds 1 \
  --repeats 3 --ops target --no-isolate --json > "$OUT/merge.txt"
status merge $?
cat "$OUT/merge.txt"

# ---- tests that skip without CUDA: first those without Ray, then the two Ray runs (each its own limit)
part "GPU tests"
timeout -k 10 ${TESTS_S:-60} $PY -m pytest -m '' -q -p no:cacheprovider -o addopts='' -rs \
  tests/test_merging_kernels.py \
  "tests/test_evaluation_evaluator.py::test_cuda_scores_match_cpu" \
  "tests/test_merging_contract.py::test_runs_on_cuda_like_on_cpu" \
  "tests/test_merging_options.py::test_fast_mask_on_cuda" \
  "tests/test_search_operators.py::test_results_stay_on_the_parents_device" > "$OUT/tests.txt" 2>&1
status tests $?
tail -n 15 "$OUT/tests.txt"
if [ "$HAVE_RAY" = 1 ]; then
  part "GPU tests with Ray"
  timeout -k 10 ${TESTS_RAY_S:-100} $PY -m pytest -m '' -q -p no:cacheprovider -o addopts='' -rs \
    tests/test_evolve_gpu.py > "$OUT/tests_ray.txt" 2>&1
  status tests_ray $?
  tail -n 15 "$OUT/tests_ray.txt"
else
  status tests_ray "skipped: no Ray on this machine (run the stage call first)"
fi

# ---- model: the stacked evaluator vs the naive loop (no Ray; writes the model files into $WS once),
# then the actors on the GPU reusing them, in a second process (a limit in one keeps the other's result)
part "model_scale $SIZE, stacked evaluator vs naive loop"
timeout -k 10 ${NAIVE_S:-140} $PY benchmarks/model_scale.py --size $SIZE --device "$DEV" --space ab --naive 10 \
  --phases naive --workdir "$WS" --json "$OUT/model_scale_1b_naive.json" > "$OUT/model_scale_1b_naive.txt"
status model_naive $?
cat "$OUT/model_scale_1b_naive.txt"
if [ "$HAVE_RAY" = 1 ]; then
  part "model_scale $SIZE, actors on the $DEV"
  timeout -k 10 ${ACTORS_S:-115} $PY benchmarks/model_scale.py --size $SIZE --device "$DEV" --gpus-per-actor $GPA \
    --threads $THREADS --space ab --naive 0 --phases genome,swarm,scale --workdir "$WS" \
    --json "$OUT/model_scale_1b.json" > "$OUT/model_scale_1b.txt"
  status model $?
  cat "$OUT/model_scale_1b.txt"
else
  status model_actors "skipped: no Ray on this machine (run the stage call first)"
fi

part table
$PY benchmarks/model_scale_gpu_table.py "$OUT" | tee "$OUT/table.txt"
