"""Ray job: ``evomerge tune`` run by several workers (Ray tasks) that share one Optuna study.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/tune.py --workers 2 --config jobs/configs/tune_small.yaml --small --out /abs/runs/tune-1

``--workers N`` (at least 1, default 2) and ``--cpus-per-worker C`` (above 0, default 1) are this
job's own options; every other option is ``evomerge tune``'s (checked here too, before anything
starts). The study is created (or, with ``--resume``, checked) once before the workers start;
each worker is ``evomerge tune --resume --worker i`` working in ``OUT/worker-i`` (its trials'
run folders), which it removes when it ends; the study's tables and figures are written to
``OUT`` at the end.

Storage: ``--storage`` / ``$EVOMERGE_OPTUNA_STORAGE`` / ``tune.storage``, else SQLite in ``OUT``
(one machine). On several nodes use PostgreSQL or a journal file on shared storage; a URL with a
password is never passed to the workers: each resolves it from its own environment (see
docs/tuning.md for giving a job the password).
"""

from __future__ import annotations

import sys

import _common


def _worker(args: list[str], folder: str, resume_cmd: str | None = None) -> int:
    """One study worker (a Ray task): ``evomerge tune ARGS --out FOLDER`` in the task's process
    (which imports evomerge from the job's working directory, not this folder's ``_common``).
    ``FOLDER`` is the worker's workspace (its GENOME/Swarm trials' run folders, its copy of the
    study's tables and figures): nobody needs it once the worker ends (the study is in the
    storage, a cut trial starts afresh, and the job writes the study's outputs to ``--out``), so
    the worker removes it, on whichever node it ran. So its lines naming ``FOLDER`` (``results in
    FOLDER``, ``best config: FOLDER/...``) are not printed (the job prints the study's at the
    end), and an interrupted worker's line gives ``resume_cmd``, the job's resume command."""
    import contextlib
    import shutil
    import sys

    from evomerge.cli import _common as cli_common
    from evomerge.cli import main

    if resume_cmd is not None:
        cli_common.RESUME_COMMAND = lambda: resume_cmd
    hidden = (f"results in {folder}", f"best config: {folder}")
    quiet = cli_common.EditedStream(sys.stdout, lambda text: "" if text.startswith(hidden) else text)
    try:
        with contextlib.redirect_stdout(quiet):
            return main(["tune", *args, "--out", folder])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop_workers(refs) -> None:
    """Cancel the study workers, all at once (a KeyboardInterrupt in each: ``evomerge tune``
    records its trial in flight as failed and enqueues it again, and the worker removes its
    folder), wait for them at most :data:`WORKER_STOP_WAIT_S`, then kill those still running
    (``force``: a worker that swallowed the interrupt, or one slow to unwind). Bounded by
    :data:`WORKER_STOP_WAIT_S` + :data:`WORKER_KILL_WAIT_S` (1.5 s), well inside the 3 s that
    ``ray job stop`` gives a job before SIGKILL (``RAY_JOB_STOP_WAIT_TIME_S``): a killed worker's
    trial stays RUNNING in the study, and ``--resume`` enqueues it again (its folder is removed
    by the job). Without a wait here the job would leave the workers running on a cluster it
    joined."""
    import ray

    def cancel(pending, force: bool) -> None:
        for ref in pending:
            try:
                ray.cancel(ref, force=force)
            except Exception:  # noqa: BLE001 - finished already, or Ray going away
                pass

    def wait(pending, timeout: float) -> list:
        try:
            return ray.wait(pending, num_returns=len(pending), timeout=timeout)[1]
        except Exception:  # noqa: BLE001 - Ray going away
            return []

    cancel(refs, force=False)
    pending = wait(list(refs), WORKER_STOP_WAIT_S)
    if pending:
        cancel(pending, force=True)
        wait(pending, WORKER_KILL_WAIT_S)


def _gather(refs) -> list:
    """``ray.get(refs)``, waiting in short steps: a SIGTERM reaches the job between two of them
    (within :data:`POLL_S`), where a blocked ``ray.get`` notices it up to a second late."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
    return ray.get(refs)


POLL_S = 0.1
WORKER_STOP_WAIT_S = 1.2  # for the cancelled workers to record their trial and end (0.4-1.1 s measured)
WORKER_KILL_WAIT_S = 0.3  # then for those killed


def fan_out(workers: int, cpus_per_worker: float):
    state = {"study": False}

    def runner(command: str, args: list[str]) -> int:
        from pathlib import Path

        from evomerge.cli.tune import space_error, tune_config
        from evomerge.distributed.cluster import ray_session
        from evomerge.errors import EvomergeError
        from evomerge.storage_uri import mask_uri
        from evomerge.pipelines.tune.files import worker_dir
        from evomerge.pipelines.tune.run import create_or_check_study, write_outputs

        p = _common.cli_params(command, args)
        out = Path(p["out"])
        try:  # the config exactly as `evomerge tune` builds it (--set, --zoo/--small, --timeout)
            profile, cfg = tune_config(p["config"], p["sets"], p["zoo"], p["small"], timeout=p["timeout"])
            small = profile == "small"
            _check_fits(cfg, cpus_per_worker)
            url, name = create_or_check_study(cfg, out, storage=p["storage"], study_name=p["study_name"],
                                              resume=p["resume"], small=small)
        except EvomergeError as err:  # (a refused dimension named with where it was set, as evomerge tune does)
            print(f"error: {space_error(err, p['config'], p['sets'])}", file=sys.stderr, flush=True)
            return 2
        print(f"study `{name}` in {mask_uri(url)}; {workers} worker(s)", flush=True)
        rest = list(args)
        for opt in ("--out", "--storage", "--study-name", "--worker"):
            _, rest = _common.take_option(rest, opt)
        rest = [a for a in rest if a != "--resume"]
        # the URL itself unless it holds a secret: then each worker resolves it from its own environment
        storage = ["--storage", url] if mask_uri(url) == url else ([] if p["storage"] is None else ["--storage", p["storage"]])
        import ray

        from evomerge.cli import _common as cli_common

        resume_cmd = cli_common.RESUME_COMMAND() if cli_common.RESUME_COMMAND is not None else None
        state["study"] = True  # from here on, --resume continues the study
        _remove_workspaces(out)  # those of an earlier job killed before it could remove them
        try:
            with ray_session(cfg.ray, log_to_driver=True):  # keeps the job's SIGTERM handler (cluster.connect)
                task = ray.remote(num_cpus=cpus_per_worker, max_retries=0)(_worker)
                refs = [
                    task.remote([*rest, *storage, "--study-name", name, "--resume", "--worker", str(i)],
                                str(out / worker_dir(i)), resume_cmd)
                    for i in range(workers)
                ]
                try:
                    codes = _gather(refs)
                except KeyboardInterrupt:
                    _stop_workers(refs)  # on a cluster it joined, the workers would run on
                    raise
        except EvomergeError as err:  # e.g. `ray.address` unreachable: one line, as before the study
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
        finally:
            _remove_workspaces(out)  # those of workers ended before they could (a local Ray stopped above)
        for i, rc in enumerate(codes):
            print(f"worker {i}: exit code {rc}", flush=True)
        if any(codes):
            return max(codes)
        res = write_outputs(cfg, out, storage=url, study_name=name, small=small)
        print(f"best validation fitness {res.best_value} (default config {res.default_fitness}); states {res.states}",
              flush=True)
        print(f"best config: {res.files.get('best_config', '(no complete trial)')}", flush=True)
        return 0

    runner.resumable = lambda: state["study"]  # what an interrupted job says (jobs/_common.run)
    return runner


def _check_fits(cfg, cpus_per_worker: float) -> None:
    """Refuse ``--cpus-per-worker`` above the CPUs of the Ray the job starts itself (no
    ``ray.address``): no worker could ever start, and Ray would wait for one forever. A cluster
    it joins is left to judge (its autoscaler may add a node that fits)."""
    from evomerge.distributed.cluster import target_address
    from evomerge.errors import ConfigError

    if target_address(cfg.ray):
        return
    try:
        from ray._private.utils import get_num_cpus  # what a local Ray gives itself (cgroup limits included)

        have = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - another Ray layout
        import os

        have = float(os.cpu_count() or 1)
    if cpus_per_worker > have:
        raise ConfigError(f"--cpus-per-worker {cpus_per_worker:g}: more than the {have:g} CPU(s) of the local Ray this "
                          "job starts, so no worker could start; lower it, or join a larger cluster (`ray.address`)")


def _remove_workspaces(out) -> None:
    import shutil

    from evomerge.pipelines.tune.files import WORKER_DIR

    if out.is_dir():
        for d in out.iterdir():
            if d.is_dir() and WORKER_DIR.fullmatch(d.name):
                shutil.rmtree(d, ignore_errors=True)


def job_options(argv: list[str]) -> tuple[int, float, list[str]]:
    """``(workers, cpus per worker, the other arguments)``; a value out of range, or an argument
    ``evomerge tune`` would refuse, raises :class:`_common.JobError` naming the option (before
    anything is started or written)."""
    import math

    workers, rest = _common.take_option(argv, "--workers")
    cpus, rest = _common.take_option(rest, "--cpus-per-worker")
    import re

    if workers is None:
        n = 2
    else:
        n = int(workers) if re.fullmatch(r"\s*\+?\d+\s*", workers) else 0
    if n < 1:
        raise _common.JobError(f"--workers {workers!r}: expected a whole number of study workers, at least 1")
    try:
        c = float(cpus) if cpus is not None else 1.0
    except ValueError:
        c = float("nan")
    if not (c > 0 and math.isfinite(c)):
        raise _common.JobError(f"--cpus-per-worker {cpus!r}: expected a number of CPUs above 0 (a fraction such as "
                               "0.5 lets workers share a CPU)")
    try:  # usage errors of the options for `evomerge tune` (--n-trials 0, say): said here, not by each worker
        _common.cli_params("tune", rest)
    except Exception as err:  # noqa: BLE001 - click's own classes (typer may bundle its copy)
        fmt = getattr(err, "format_message", None)
        if not callable(fmt):
            raise
        raise _common.JobError(" ".join(str(fmt()).split())) from None
    return n, c, rest


OWN_OPTIONS = (
    ("--workers", "N", "study workers (Ray tasks), at least 1 (default 2)"),
    ("--cpus-per-worker", "C", "CPUs each worker asks Ray for, above 0 (0.5: two share a CPU; default 1)"),
)


def main(argv: list[str]) -> int:
    if _common.wants_help(argv):
        _common.print_help("tune", own=OWN_OPTIONS, hidden=("worker",), about=(
            "Ray job: `evomerge tune` run by --workers study workers sharing one Optuna study; the study's "
            "tables and figures are written to --out at the end (docs/distributed.md, Jobs)."))
        return 0
    try:
        n, c, rest = job_options(argv)
    except _common.JobError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return _common.run("tune", rest, runner=fan_out(n, c), job_argv=argv)


if __name__ == "__main__":
    _common.exit_job(main(sys.argv[1:]))
