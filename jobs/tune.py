"""Ray job: an Optuna study run by several workers (Ray tasks) sharing one storage.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/tune.py --config jobs/configs/tune_small.yaml --small --workers 2

Storage: ``--storage`` / ``$EVOMERGE_OPTUNA_STORAGE`` / ``tune.storage``, else SQLite in the
run directory (one machine). On a multi-node cluster use PostgreSQL or a journal file on a
shared file system; the URL's password comes from the environment (``${VAR}``), never a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # evomerge from the working dir

import _common  # noqa: E402


def _worker(cfg, out_dir: str, storage: str, study_name: str, n_trials: int | None, timeout, small: bool,
            index: int) -> dict:
    """One study worker (runs as a Ray task); returns how many trials it ran."""
    from evomerge.tuning.run import run_tune

    res = run_tune(cfg, Path(out_dir) / f"worker-{index}", storage=storage, study_name=study_name,
                   n_trials=n_trials, timeout=timeout, resume=True, small=small, worker=index,
                   log=lambda m: print(f"[worker {index}] {m}", flush=True))
    return {"worker": index, "trials": res.trials_run_here}


def main(argv: list[str] | None = None) -> int:
    p = _common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--storage", default=None)
    p.add_argument("--study-name", default=None)
    p.add_argument("--n-trials", type=int, default=None)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--workers", type=int, default=2, help="Ray tasks sharing the study")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = p.parse_args(argv)

    def run() -> None:
        import ray

        from evomerge.storage_uri import mask_uri
        from evomerge.tuning.run import create_or_check_study, write_outputs

        cfg = _common.load(args)
        loc = _common.RunLocation(cfg, args, "tune")
        loc.local.mkdir(parents=True, exist_ok=True)
        # Check the space, the storage and the study name once, before any worker starts.
        url, name = create_or_check_study(cfg, loc.local, storage=args.storage, study_name=args.study_name,
                                          resume=args.resume, small=args.small)
        print(f"study `{name}` in {mask_uri(url)}; {args.workers} worker(s)", flush=True)
        ray.init(address=cfg.ray.address, log_to_driver=True)
        task = ray.remote(num_cpus=args.cpus_per_worker, max_retries=0)(_worker)
        # Workers get the resolved URL unless it holds a password: then they resolve it from their own
        # environment (job runtime_env / pod env), so the secret never travels as a task argument.
        worker_url = url if mask_uri(url) == url else args.storage
        refs = [task.remote(cfg, str(loc.local), worker_url, name, args.n_trials, args.timeout, args.small, i)
                for i in range(args.workers)]
        for r in ray.get(refs):
            print(f"worker {r['worker']}: {r['trials']} trial(s)", flush=True)
        res = write_outputs(cfg, loc.local, storage=url, study_name=name, small=args.small)
        print(f"best validation fitness {res.best_value} (default config {res.default_fitness}); states {res.states}",
              flush=True)
        loc.publish()

    return _common.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
