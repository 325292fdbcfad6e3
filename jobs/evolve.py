"""Ray job: ``evomerge evolve`` (same options) with its run in a durable place.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evolve.py --algo genome --config jobs/configs/evolve_small.yaml --out /abs/runs/evolve-1

Checkpoints go to ``--out`` after every round; resubmitting the same command with ``--resume``
continues from the last one (after a stopped job, a crash, a changed upload or a head restart).
``--out``: see ``jobs/_common.py`` (an absolute path, a URI, or ``$EVOMERGE_RUNS_DIR``).
"""

import sys

import _common

if __name__ == "__main__":
    _common.exit_job(_common.run("evolve", sys.argv[1:]))
