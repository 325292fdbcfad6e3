"""Ray job: ``evomerge scale`` (same options) with its run in a durable place.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/scale.py --config jobs/configs/scale_small.yaml --small --out /abs/runs/scale-1

Every finished cell is on disk before the next starts; resubmitting with ``--resume`` (and
without ``--config``: the run's saved config is used) skips the cells already done.
``--out``: see ``jobs/_common.py`` (an absolute path, a URI, or ``$EVOMERGE_RUNS_DIR``).
"""

import sys

import _common

if __name__ == "__main__":
    _common.exit_job(_common.run("scale", sys.argv[1:]))
