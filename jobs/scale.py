"""Ray job: the scale experiment (fitness vs number of merged experts, with the stop rule).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/scale.py --config jobs/configs/scale_small.yaml --small

Every finished cell is on disk before the next starts; resubmitting with ``--resume`` skips
the cells already done.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # evomerge from the working dir

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = _common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--no-stop", action="store_true", help="run every k even after the stop rule fires")
    args = p.parse_args(argv)

    def run() -> None:
        from evomerge.driver import run_scale

        cfg = _common.load(args)
        loc = _common.RunLocation(cfg, args, "scale")
        if loc.local.exists() and any(loc.local.iterdir()) and not args.resume:
            from evomerge.errors import OutputExistsError

            raise OutputExistsError(f"{loc.final}: holds an earlier run; pass --resume to continue it or use --name")
        zoo = None
        if args.small and not cfg.experts.experts:
            from evomerge.zoo import ensure_zoo

            zoo = ensure_zoo("small", cfg.zoo_dir)
        res = run_scale(cfg, loc.local, zoo=zoo, stop=False if args.no_stop else None, progress=False)
        print(f"cells: {res.cells_run} run, {res.cells_skipped} already done, {res.evaluations} evaluations, "
              f"{res.seconds:.1f} s", flush=True)
        loc.publish()

    return _common.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
