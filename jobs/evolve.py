"""Ray job: one GENOME / Model Swarms run.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evolve.py --config jobs/configs/evolve_small.yaml --algo genome --small

Checkpoints go to the run directory after every round; resubmitting the same command with
``--resume`` continues from the last one (after a lost head, a stopped job, a crash).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # evomerge from the working dir

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = _common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--algo", choices=["genome", "swarm"], default="genome")
    args = p.parse_args(argv)

    def run() -> None:
        from evomerge.evolve import run_evolve

        cfg = _common.load(args)
        loc = _common.RunLocation(cfg, args, f"evolve-{args.algo}")
        res = run_evolve(cfg, args.algo, loc.local, resume=args.resume, progress=False,
                         zoo_profile="small" if args.small else "default")
        print(f"best validation fitness {res.best_fitness:.6f} (test {res.best_test_fitness}) after {res.rounds} rounds",
              flush=True)
        loc.publish()

    return _common.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
