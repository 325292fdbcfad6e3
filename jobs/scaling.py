"""Ray job: ``evomerge evolve-scaling`` (same options) with its results in a durable place.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/scaling.py --config jobs/configs/evolve_small.yaml --small --actors 1,2,4 --out /abs/runs/scaling-1

Runs the same evolutionary run once per actor count (one actor per node) and writes
``scaling.parquet`` and ``scaling.png`` (speedup and efficiency); the measurement itself is
``evomerge/pipelines/evolve/scaling.py``. ``--out``: see ``jobs/_common.py`` (an absolute path,
a URI, or ``$EVOMERGE_RUNS_DIR``).
"""

import sys

import _common

if __name__ == "__main__":
    _common.exit_job(_common.run("evolve-scaling", sys.argv[1:]))
