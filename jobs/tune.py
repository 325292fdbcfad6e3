"""Ray job: ``evomerge tune`` run by several workers (Ray tasks) that share one Optuna study.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/tune.py --workers 2 --config jobs/configs/tune_small.yaml --small --out /abs/runs/tune-1

``--workers N`` and ``--cpus-per-worker C`` are this job's own options; every other option is
``evomerge tune``'s. The study is created (or, with ``--resume``, checked) once before the
workers start; each worker is ``evomerge tune --resume --worker i`` with its files in
``OUT/worker-i``; the study's tables and figures are written to ``OUT`` at the end.

Storage: ``--storage`` / ``$EVOMERGE_OPTUNA_STORAGE`` / ``tune.storage``, else SQLite in ``OUT``
(one machine). On several nodes use PostgreSQL or a journal file on shared storage; a URL with a
password is never passed to the workers: each resolves it from its own environment (see
docs/tuning.md for giving a job the password).
"""

from __future__ import annotations

import sys

import _common


def _worker(args: list[str]) -> int:
    """One study worker (a Ray task): ``evomerge tune ARGS`` in the task's process (which
    imports evomerge from the job's working directory, not this folder's ``_common``)."""
    from evomerge.cli import main

    return main(["tune", *args])


def _stop_workers(refs) -> None:
    """Cancel the study workers (a KeyboardInterrupt in each: ``evomerge tune`` records its trial
    in flight as failed and enqueues it again) and wait for them a little; a local Ray stopped
    next ends any still running."""
    import ray

    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - finished already, or Ray going away
            pass
    try:
        ray.wait(refs, num_returns=len(refs), timeout=WORKER_STOP_WAIT_S)
    except Exception:  # noqa: BLE001
        pass


WORKER_STOP_WAIT_S = 5.0


def fan_out(workers: int, cpus_per_worker: float):
    state = {"study": False}

    def runner(command: str, args: list[str]) -> int:
        from pathlib import Path

        from evomerge.cli.tune import tune_config
        from evomerge.distributed.cluster import ray_session
        from evomerge.errors import EvomergeError
        from evomerge.storage_uri import mask_uri
        from evomerge.pipelines.tune.run import create_or_check_study, write_outputs

        p = _common.cli_params(command, args)
        out = Path(p["out"])
        try:  # the config exactly as `evomerge tune` builds it (--set, --zoo/--small)
            profile, cfg = tune_config(p["config"], p["sets"], p["zoo"], p["small"])
            small = profile == "small"
            url, name = create_or_check_study(cfg, out, storage=p["storage"], study_name=p["study_name"],
                                              resume=p["resume"], small=small)
        except EvomergeError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
        print(f"study `{name}` in {mask_uri(url)}; {workers} worker(s)", flush=True)
        rest = list(args)
        for opt in ("--out", "--storage", "--study-name", "--worker"):
            _, rest = _common.take_option(rest, opt)
        rest = [a for a in rest if a != "--resume"]
        # the URL itself unless it holds a secret: then each worker resolves it from its own environment
        storage = ["--storage", url] if mask_uri(url) == url else ([] if p["storage"] is None else ["--storage", p["storage"]])
        import ray

        state["study"] = True  # from here on, --resume continues the study
        with ray_session(cfg.ray, log_to_driver=True):  # keeps the job's SIGTERM handler (cluster.connect)
            task = ray.remote(num_cpus=cpus_per_worker, max_retries=0)(_worker)
            refs = [
                task.remote([*rest, *storage, "--study-name", name, "--resume", "--worker", str(i),
                             "--out", str(out / f"worker-{i}")])
                for i in range(workers)
            ]
            try:
                codes = ray.get(refs)
            except KeyboardInterrupt:
                _stop_workers(refs)  # on a cluster it joined, the workers would run on
                raise
        for i, rc in enumerate(codes):
            print(f"worker {i}: exit code {rc}", flush=True)
        if any(codes):
            return max(codes)
        res = write_outputs(cfg, out, storage=url, study_name=name, small=small)
        print(f"best validation fitness {res.best_value} (default config {res.default_fitness}); states {res.states}",
              flush=True)
        return 0

    runner.resumable = lambda: state["study"]  # what an interrupted job says (jobs/_common.run)
    return runner


def main(argv: list[str]) -> int:
    try:
        workers, rest = _common.take_option(argv, "--workers")
        cpus, rest = _common.take_option(rest, "--cpus-per-worker")
        n, c = int(workers or 2), float(cpus or 1.0)
    except (_common.JobError, ValueError) as err:
        print(f"error: --workers / --cpus-per-worker: {err}", file=sys.stderr)
        return 2
    return _common.run("tune", rest, runner=fan_out(n, c), job_argv=argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
