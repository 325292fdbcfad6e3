"""What every Ray job entrypoint shares: a durable place for the run, then the ``evomerge`` CLI.

A Ray job runs in Ray's temporary package folder
(``<temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``): a new folder for
every changed upload, gone with the Ray session. So a job's ``--out`` must be durable:

* an absolute path on the head or on shared storage (used directly; a resubmission with the
  same ``--out`` and ``--resume`` continues the run whatever the upload), or
* an object-store URI (``s3://``, ``gs://``, ...): the command writes to a local scratch folder
  (``$EVOMERGE_JOB_SCRATCH``, else the system's temp folder), which is copied there when it
  ends; ``--resume`` fetches it back first;
* nothing: ``$EVOMERGE_RUNS_DIR/<command>-<submission id>`` (``clusters/local/start_head.sh``
  sets ``EVOMERGE_RUNS_DIR`` for the head's processes; set it in the image or pod elsewhere).

A relative ``--out`` inside a Ray job is refused (it would land in the package folder), and so
is ``--resume`` where no run exists. Everything else is the CLI's own options and checks.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

RUNS_DIR_ENV = "EVOMERGE_RUNS_DIR"
SCRATCH_ENV = "EVOMERGE_JOB_SCRATCH"


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
    """Where the command writes (``local``) and where its results end up (``final``)."""

    def __init__(self, command: str, out: str | None, resume: bool) -> None:
        from evomerge.storage_uri import is_uri

        job = submission_id()
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
            scratch = Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / "evomerge-jobs" / (job or command)
            shutil.rmtree(scratch, ignore_errors=True)  # the object store holds the truth
            self.local = scratch / "run"
            if resume:
                from evomerge.storage_uri import fetch_dir

                if not fetch_dir(out, self.local):
                    raise JobError(f"--resume: nothing at {out} to continue (is --out the one of the first submission?)")
        else:
            self.local = Path(out).expanduser().resolve()
            if resume and not (self.local.is_dir() and any(self.local.iterdir())):
                raise JobError(f"--resume: no run at {self.local} to continue (is --out the one of the first submission?)")

    def publish(self) -> str:
        from evomerge.storage_uri import mask_uri, publish_dir

        if self.local.is_dir():
            publish_dir(self.local, self.final)
        print(f"evomerge job results: {mask_uri(self.final)}", flush=True)
        return self.final


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def cli(command: str, args: Sequence[str]) -> int:
    """``evomerge COMMAND ARGS`` in this process; its exit code."""
    from evomerge.cli import main

    return main([command, *args])


def cli_params(command: str, args: Sequence[str]) -> dict:
    """The CLI's own parse of ``evomerge COMMAND ARGS`` (for a wrapper that needs a value)."""
    import typer.main

    from evomerge.cli import app

    group = typer.main.get_command(app)
    return group.commands[command].make_context(command, list(args)).params


def run(command: str, argv: Sequence[str], runner: Callable[[str, list[str]], int] = cli) -> int:
    """Resolve the run's location from ``--out``/``--resume``, run ``runner(command, args with
    --out LOCAL)``, and publish the results when it succeeds."""
    try:
        out, rest = take_option(argv, "--out")
        loc = RunLocation(command, out, "--resume" in rest)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    print(f"evomerge job: {command} in {loc.local}", flush=True)
    rc = runner(command, [*rest, "--out", str(loc.local)])
    if rc == 0:
        loc.publish()
    return rc
