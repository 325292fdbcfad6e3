#!/usr/bin/env bash
# Run HERE (a machine with pip and PyPI), once, before benchmarks/gpu_check.sh runs on a device
# machine. The device image has torch, triton, transformers, peft, pyarrow and pytest but not
# evomerge's other needs, and nothing can be fetched there: this puts cp312 wheels of them under
# .gpu_check/ (ignored through .git/info/exclude), split into parts that each fit a call's
# 64 MiB beside the 38 MB tracked tree:
#   .gpu_check/base/   pydantic, datasets and their missing needs (~10 MB): enough for the merge
#                      kernels, the stacked evaluator vs the naive loop and most GPU tests
#   .gpu_check/ray1/, .gpu_check/ray2/   Ray (2.60, without its Java jars, dashboard client and
#                      libraries evomerge does not use), as two halves of one tar.gz, plus its needs
# See docs/benchmarks.md "GPU check" for the calls that carry them.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu_check/' .git/info/exclude 2>/dev/null || echo '/.gpu_check/' >> .git/info/exclude
rm -rf .gpu_check && mkdir -p .gpu_check/base .gpu_check/ray1 .gpu_check/ray2 .gpu_check/tmp
PY=${PYTHON:-python3}
dl() {  # dl DIR NAME==VERSION...
  local dir=$1; shift
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$dir" "$@"
}
dl .gpu_check/base pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 typing-extensions==4.16.0  # pydantic needs >= 4.16
dl .gpu_check/ray1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
dl .gpu_check/tmp ray==2.60.0
# the ray wheel (79 MB) unpacked without what evomerge never loads, as one tar.gz in two halves
(cd .gpu_check/tmp && $PY -m zipfile -e ray-*.whl site && rm -rf site/ray/jars site/ray/dashboard/client \
  site/ray/rllib site/ray/serve site/ray/llm site/ray/data site/ray/train site/ray/cpp \
  && tar -C site -czf ray.tar.gz .)
split -n 2 -d .gpu_check/tmp/ray.tar.gz .gpu_check/tmp/ray.tar.gz.part
mv .gpu_check/tmp/ray.tar.gz.part00 .gpu_check/ray1/ && mv .gpu_check/tmp/ray.tar.gz.part01 .gpu_check/ray2/
rm -rf .gpu_check/tmp
du -sh .gpu_check/*
