"""What every Ray job entrypoint shares: a durable place for the run, then the ``evomerge`` CLI.

A Ray job runs in Ray's temporary package folder
(``<temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``): a new folder for
every changed upload, gone with the Ray session. So a job's ``--out`` must be durable:

* an absolute path on the head or on shared storage (used directly; a resubmission with the
  same ``--out`` and ``--resume`` continues the run whatever the upload), or
* an object-store URI (``s3://``, ``gs://``, ...): the command writes to a local scratch folder
  (``$EVOMERGE_JOB_SCRATCH``, else the system's temp folder), which is copied there while it
  runs (every ``$EVOMERGE_JOB_PUBLISH_INTERVAL_S`` seconds, default 60; 0: only at the end) and when it
  ends, whether it succeeded, failed or was interrupted (``jobs/_mirror.py``: only what changed,
  in the order it was written, each file atomically); ``--resume`` fetches it back first, and a
  new run refuses a URI that already holds one;
* nothing: ``$EVOMERGE_RUNS_DIR/<command>-<submission id>`` (``clusters/local/start_head.sh``
  sets ``EVOMERGE_RUNS_DIR`` for the head's processes; set it in the image or pod elsewhere).

A relative ``--out`` inside a Ray job is refused (it would land in the package folder), and so
is ``--resume`` where no run exists. Everything else is the CLI's own options and checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

RUNS_DIR_ENV = "EVOMERGE_RUNS_DIR"
SCRATCH_ENV = "EVOMERGE_JOB_SCRATCH"
PUBLISH_INTERVAL_ENV = "EVOMERGE_JOB_PUBLISH_INTERVAL_S"
DEFAULT_PUBLISH_INTERVAL_S = 60.0
DIRTY = "NOT-YET-COPIED"  # in a URI run's scratch folder while it may hold what the URI does not


class JobError(Exception):
    """A job argument that cannot work; printed as ``error: ...`` with exit code 2."""


def submission_id() -> str | None:
    """The Ray job's submission id (``raysubmit_...``), or None outside a Ray job."""
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
    except ValueError:
        return None
    return meta.get("job_submission_id")


def take_option(argv: Sequence[str], name: str) -> tuple[str | None, list[str]]:
    """``(value, argv without it)`` for ``--name VALUE`` / ``--name=VALUE`` (the last one wins)."""
    value, rest, i = None, [], 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a == name:
            if i + 1 >= len(args):
                raise JobError(f"{name} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


class RunLocation:
    """Where the command writes (``local``) and where its results end up (``final``); for a URI,
    ``mirror`` keeps it a copy of ``local`` (``jobs/_mirror.py``)."""

    def __init__(self, command: str, out: str | None, resume: bool, overwrite: bool = False) -> None:
        from evomerge.storage_uri import is_uri

        job = submission_id()
        self.mirror = None
        self._held = contextlib.ExitStack()
        if out is None:
            base = os.environ.get(RUNS_DIR_ENV)
            if resume:
                raise JobError("--resume needs --out naming the run to continue (a resubmission gets a new submission id)")
            if not base:
                raise JobError(
                    f"no --out and ${RUNS_DIR_ENV} is not set: pass --out with an absolute path on the head or on "
                    f"shared storage (or an s3://... URI), or start the head with a runs folder "
                    f"(clusters/local/start_head.sh --runs-dir DIR sets ${RUNS_DIR_ENV})"
                )
            if not (is_uri(base) or os.path.isabs(base)):
                raise JobError(f"${RUNS_DIR_ENV}={base!r} is relative; it must be an absolute path or a URI")
            out = _join(base, f"{command}-{job or os.getpid()}")
        if out.startswith("file://"):
            out = out[len("file://"):]
        if not is_uri(out) and not os.path.isabs(out) and job is not None:
            raise JobError(
                f"--out {out!r} is relative: inside a Ray job it would resolve into Ray's temporary package folder "
                f"({os.getcwd()}), which a changed upload or a head restart replaces, so the results would be lost "
                "and --resume could not find them; pass an absolute path on the head or on shared storage, "
                f"or an s3://... URI (or leave --out out and set ${RUNS_DIR_ENV})"
            )
        self.final = out
        if is_uri(out):
            try:
                self._scratch(command, out, resume, overwrite)
            except BaseException:
                self.release()
                raise
        else:
            self.local = Path(out).expanduser().resolve()
            if resume and not (self.local.is_dir() and any(self.local.iterdir())):
                raise JobError(f"--resume: no run at {self.local} to continue (is --out the one of the first submission?)")

    def _scratch(self, command: str, out: str, resume: bool, overwrite: bool) -> None:
        """The local copy of the URI's run: one scratch folder per URI (locked while a job uses it)."""
        from _mirror import Mirror

        from evomerge.errors import EvomergeError
        from evomerge.io import file_lock, output_lock_path
        from evomerge.storage_uri import mask_uri

        shown = mask_uri(out)
        interval = publish_interval()
        base = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()).expanduser().resolve() / "evomerge-jobs"
        self.scratch = base / f"{command}-{hashlib.sha256(out.encode()).hexdigest()[:12]}"
        lock = output_lock_path(self.scratch)
        try:
            self._held.enter_context(file_lock(lock, blocking=False, busy=(
                f"--out {shown}: another job on this machine is writing this run now (its scratch folder "
                f"{self.scratch} is locked)")))
        except EvomergeError as err:
            raise JobError(str(err)) from None
        self.local = self.scratch / "run"
        if self.local.exists():  # an earlier job's copy
            if (self.scratch / DIRTY).exists():  # ... that may hold what the URI does not: keep it
                kept = self.scratch / f"not-copied-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(self.local, kept)
                print(f"evomerge job: an earlier job's run folder for {shown} was not wholly copied there "
                      f"(the job was killed?); kept in {kept}", flush=True)
            else:
                shutil.rmtree(self.local)
        (self.scratch / DIRTY).unlink(missing_ok=True)
        skip, databases = lambda rel: False, ()
        if command == "tune":  # its workers' own folders are never copied; its SQLite study is live while it runs
            from evomerge.pipelines.tune.files import OPTUNA_DB, WORKER_DIR

            private = re.compile(rf"{WORKER_DIR.pattern}(/|$)")
            skip, databases = (lambda rel: bool(private.match(rel))), (OPTUNA_DB,)
        try:
            self.mirror = Mirror(self.local, out, self.scratch, skip=skip, databases=databases)
            held = self.mirror.remote_files()
            if resume and not held:
                raise JobError(f"--resume: nothing at {shown} to continue (is --out the one of the first submission?)")
            if held and not (resume or overwrite):
                raise JobError(f"--out {shown} already holds a run ({len(held)} file(s), e.g. {held[0]}); "
                               "pass --resume to continue it, or choose another --out")
            if held:
                self.mirror.fetch(held)
        except EvomergeError as err:  # a URI pyarrow cannot open
            raise JobError(str(err)) from None
        self.interval = interval

    def start(self) -> None:
        """The command starts writing: from here on the scratch folder may hold what the URI does not."""
        if self.mirror is not None:
            from _mirror import Periodic

            self.scratch.mkdir(parents=True, exist_ok=True)
            (self.scratch / DIRTY).touch()
            self._periodic = Periodic(self.mirror, self.interval)

    def copy(self) -> str | None:
        """For a URI: stop the periodic copies and copy what the run folder holds now; None when
        all of it is at the URI, else why not (an ``error:`` line says so)."""
        if self.mirror is None:
            return None
        from evomerge.storage_uri import mask_uri

        periodic = getattr(self, "_periodic", None)
        if periodic is not None:
            periodic.stop()
        try:
            if not self.mirror.publish():
                raise OSError("the run folder kept changing while it was copied")
        except Exception as err:  # noqa: BLE001 - the store, the network
            why = mask_uri(str(err)) or type(err).__name__
            print(f"error: could not copy the run to {mask_uri(self.final)} ({why}); what it wrote stays in "
                  f"{self.local}", file=sys.stderr, flush=True)
            return why
        (self.scratch / DIRTY).unlink(missing_ok=True)
        return None

    def publish(self) -> str:
        """The results' location, printed (a plain path is written in place; a URI is copied)."""
        from evomerge.storage_uri import mask_uri

        print(f"evomerge job results: {mask_uri(self.final)}", flush=True)
        return self.final

    def shown(self) -> str:
        from evomerge.storage_uri import mask_uri

        return mask_uri(self.final) if self.mirror is not None else str(self.local)

    def release(self, done: bool = False) -> None:
        """Unlock the scratch folder; ``done`` (the run is complete at the URI): remove it."""
        if done and self.mirror is not None and not (self.scratch / DIRTY).exists():
            shutil.rmtree(self.local, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.scratch.rmdir()  # unless an earlier job's folder is kept there
        self._held.close()


def publish_interval() -> float:
    """Seconds between two copies of a URI run while it runs (``$EVOMERGE_JOB_PUBLISH_INTERVAL_S``)."""
    raw = os.environ.get(PUBLISH_INTERVAL_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_PUBLISH_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise JobError(f"${PUBLISH_INTERVAL_ENV}={raw!r}: expected seconds >= 0 (0: copy only when the job ends)")
    return value


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def cli(command: str, args: Sequence[str]) -> int:
    """``evomerge COMMAND ARGS`` in this process; its exit code."""
    from evomerge.cli import main

    return main([command, *args])


def wants_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for the usage (``--help`` before any ``--``)."""
    args = list(argv)
    return "--help" in (args[:args.index("--")] if "--" in args else args)


OUT_HELP = ("where the run lives: an absolute path on the head or on shared storage, or an s3://... URI "
            "(copied while the job runs); default: a folder named after the job in $EVOMERGE_RUNS_DIR")


def print_help(command: str, *, script: str | None = None, about: str = "", own: Sequence[tuple[str, str, str]] = (),
               hidden: Sequence[str] = ()) -> None:
    """The job's usage: ``python jobs/NAME.py``, ``about`` and its ``own`` options (``(flag,
    metavar, help)``) before the command's options (``--out`` as the job reads it; ``hidden``:
    those the job sets itself)."""
    import copy

    import typer.main

    from evomerge.cli import app

    cmd = typer.main.get_command(app).commands[command]  # a fresh copy: changed here only
    cmd.help = (about + "\n\n" if about else "") + (cmd.help or "")
    params = []
    for flag, metavar, text in own:  # shown like the command's options (a copy of one: typer's own class)
        option = copy.copy(next(p for p in cmd.params if p.name == "out"))
        option.name, option.opts, option.secondary_opts = flag.lstrip("-").replace("-", "_"), [flag], []
        option.metavar, option.help, option.default, option.show_default = metavar, text, None, False
        option.required = False
        params.append(option)
    for param in cmd.params:
        if param.name in hidden:
            continue
        if param.name == "out":
            param.help, param.show_default, param.required = OUT_HELP, False, False
        params.append(param)
    cmd.params = params
    name = script or f"jobs/{JOB_FILES.get(command, command)}.py"
    ctx = cmd.make_context(f"python {name}", [], resilient_parsing=True)
    text = cmd.get_help(ctx)  # typer prints it (rich) and returns ""; click returns it
    if text:
        print(text, flush=True)


def cli_params(command: str, args: Sequence[str]) -> dict:
    """The CLI's own parse of ``evomerge COMMAND ARGS`` (for a wrapper that needs a value)."""
    import typer.main

    from evomerge.cli import app

    group = typer.main.get_command(app)
    return group.commands[command].make_context(command, list(args)).params


# options a resumed run must not be given again (``evomerge scale --resume`` reads its saved config)
NOT_ON_RESUME = {"scale": ("--config", "--preset", "--set")}


def job_command(command: str, job_argv: Sequence[str], out: str | None = None, *, resume: bool = False) -> str:
    """The job's own command line (``python jobs/NAME.py ARGS``); with ``resume`` the line an
    interrupted job prints: the same arguments with ``--out`` naming the run (the one the job
    chose when none was given) and ``--resume`` (without what the command refuses on resume)."""
    import shlex

    args = list(job_argv)
    if resume:
        for name in NOT_ON_RESUME.get(command, ()):
            args = take_option(args, name)[1]  # every occurrence (--set repeats)
        if out is not None and take_option(args, "--out")[0] is None:
            args += ["--out", out]
        if "--resume" not in args:
            args.append("--resume")
    script = sys.argv[0] if Path(sys.argv[0]).parent.name == "jobs" else f"jobs/{JOB_FILES.get(command, command)}.py"
    return shlex.join(["python", script, *args])


JOB_FILES = {"evolve-scaling": "scaling"}  # the job file of a command, where the names differ


def run(command: str, argv: Sequence[str], runner: Callable[[str, list[str]], int] = cli,
        job_argv: Sequence[str] | None = None) -> int:
    """Resolve the run's location from ``--out``/``--resume``, run ``runner(command, args with
    --out LOCAL)``, and publish the results.

    A URI ``--out`` gets what the run folder holds however the command ends (success, failure,
    interrupt) and, while it runs, every ``$EVOMERGE_JOB_PUBLISH_INTERVAL_S`` seconds, so the
    resume command an interrupted job prints finds the run there.

    SIGINT / SIGTERM (Ctrl-C, a cancelled job) end it as the ``evomerge`` CLI ends: every
    cleanup runs (the Ray session it started is stopped; a cluster it joined stays), one line
    on stderr says what stopped and gives the job's resume command (``job_argv``, the job's
    own arguments, default ``argv``, plus ``--resume``), exit code 130 / 143, no traceback, and
    no process the job started is left (a Ray agent whose raylet is gone, say). A runner that
    raises the interrupt gets the generic line; one may give ``runner.resumable()`` (is there
    anything to resume?), else a non-empty local run folder counts."""
    from evomerge import interrupts

    if wants_help(argv):
        print_help(command, about=f"Ray job: `evomerge {command}` with its run in a durable place "
                   "(docs/distributed.md, Jobs).")
        return 0
    job_argv = list(argv if job_argv is None else job_argv)
    resume_cmd = job_command(command, job_argv, resume=True)
    seen: dict = {}

    def snapshot() -> None:  # the job's processes when the signal came (before any is re-parented)
        from evomerge.pipelines.scale.interrupt import descendants

        seen.update(descendants())

    loc = None
    done = False
    try:
        with interrupts.stop_on_signals() as fired, interrupts.when_interrupted(snapshot):
            try:
                try:
                    out, rest = take_option(argv, "--out")
                    loc = RunLocation(command, out, "--resume" in rest, overwrite="--overwrite" in rest)
                except JobError as err:
                    print(f"error: {err}", file=sys.stderr, flush=True)
                    return 2
                resume_cmd = job_command(command, job_argv, loc.final, resume=True)
                print(f"evomerge job: {command} in {loc.local}", flush=True)
                from evomerge.cli import _common as cli_common

                # the command's line names the job's own resume command, not `evomerge ...`
                before, cli_common.RESUME_COMMAND = cli_common.RESUME_COMMAND, lambda: resume_cmd
                loc.start()
                try:
                    with (printed_as(str(loc.local), loc.shown()) if loc.mirror is not None
                          else contextlib.nullcontext()):
                        rc = runner(command, [*rest, "--out", str(loc.local)])
                finally:
                    cli_common.RESUME_COMMAND = before
            except KeyboardInterrupt as err:  # a runner of its own (jobs/tune.py), or while resolving --out
                rc = interrupts.exit_code(err, fired)
                resumable = getattr(runner, "resumable", None)
                _end_leftovers(seen)
                failed = loc.copy() if loc is not None else None
                if loc is not None and (resumable() if resumable is not None
                                        else loc.local.is_dir() and any(loc.local.iterdir())):
                    at_uri = loc.mirror is not None and failed is None  # copied there just now
                    line = (f"interrupted: {command} job (what it finished {'is' if at_uri else 'stays'} in "
                            f"{loc.shown() if at_uri else loc.local}); resume with: {resume_cmd}")
                else:
                    line = f"interrupted: {command} job stopped before it wrote anything; nothing to resume (run it again)"
                print(line, file=sys.stderr, flush=True)
                return rc
            if fired:  # the CLI stopped on the signal and printed its line
                _end_leftovers(seen)
                if loc.copy() is None and loc.mirror is not None:
                    loc.publish()
                return rc
            try:
                failed = loc.copy()
            except KeyboardInterrupt as err:  # while copying a finished run
                print(f"interrupted: {command} job while it copied its run to {loc.shown()} (the rest stays in "
                      f"{loc.local}); resume with: {resume_cmd}", file=sys.stderr, flush=True)
                return interrupts.exit_code(err, fired)
            if failed is not None:
                return rc or 1
            if rc == 0 or loc.mirror is not None:
                loc.publish()
            done = rc == 0
            return rc
    finally:
        if loc is not None:
            loc.release(done=done)


@contextlib.contextmanager
def printed_as(local: str, final: str):
    """While the command runs, what it prints names ``final`` (the URI its run is copied to)
    where it names ``local`` (the scratch folder, removed after a success): ``history: ...``,
    ``best adapter: ...``. A path inside a URL (``sqlite:///LOCAL/optuna.db``) is left alone."""
    pattern = re.compile(rf"(?<!sqlite:///){re.escape(local)}(?![^/\s'\"`:;,)\]])")  # the folder, not a longer name

    def edit(text: str) -> str:
        return pattern.sub(lambda m: final, text) if local in text else text

    from evomerge.cli._common import EditedStream

    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EditedStream(sys.stdout, edit), EditedStream(sys.stderr, edit)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


def exit_job(code: int) -> None:
    """End the job program with ``code``. An interrupted job (130 / 143) has cleaned up by now
    (its Ray session closed, its processes ended, its run copied): it skips the interpreter's
    teardown (about 1 s with torch and Ray loaded), which ``ray job stop`` would count against
    its 3 s before SIGKILL."""
    if code not in (130, 143):
        sys.exit(code)
    from evomerge.cli import exit_now

    exit_now(code)


def _end_leftovers(seen: dict) -> None:
    """End what the job started and its cleanup did not: those of its processes seen when the
    signal came, and its descendants now. A cluster it joined is no descendant of it."""
    from evomerge.pipelines.scale.interrupt import descendants, end_survivors

    end_survivors({**seen, **descendants()})
