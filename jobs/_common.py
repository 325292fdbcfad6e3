"""Shared plumbing of the Ray job entrypoints: arguments, the run directory, publishing results.

A job computes into a local run directory and publishes it to the configured location
(``--output`` or ``output:`` in the config): a shared file system path is used directly (so a
resubmitted job resumes from it), an object-store URI (``s3://``, ``gs://``, ``file://``) gets a
copy of the run directory when the job ends (and is fetched back first on ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from evomerge.config import EvomergeConfig, config_from_dict, load_config
from evomerge.errors import EvomergeError
from evomerge.storage_uri import fetch_dir, is_uri, join, mask_uri, publish_dir, resolve

DEFAULT_OUTPUT = "runs/jobs"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="evomerge YAML config (the shared schema)")
    p.add_argument("--output", default=None,
                   help=f"results location: a path or pyarrow URI (default: config `output`, else {DEFAULT_OUTPUT})")
    p.add_argument("--name", default=None, help="run name under the output location (default: the Ray job's submission id); "
                   "pass the same name with --resume")
    p.add_argument("--resume", action="store_true", help="continue the run found at the output location")
    p.add_argument("--small", action="store_true", help="use the small built-in zoo when the config names no experts")
    return p


def load(args: argparse.Namespace) -> EvomergeConfig:
    """The config, joined to the Ray cluster this job runs on (``RAY_ADDRESS`` is set by Ray Jobs)."""
    cfg = load_config(args.config)
    address = os.environ.get("RAY_ADDRESS")
    if address and cfg.ray.address is None:
        data = cfg.model_dump(mode="json", exclude_none=True)
        data["ray"]["address"] = address
        cfg = config_from_dict(data, args.config)
    return cfg


def submission_id() -> str | None:
    """The Ray job's submission id (``raysubmit_...``) when running as a Ray job."""
    import json

    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
    except ValueError:
        return None
    return meta.get("job_submission_id")


class RunLocation:
    """Where this run computes (``local``) and where its results end up (``final``)."""

    def __init__(self, cfg: EvomergeConfig, args: argparse.Namespace, kind: str) -> None:
        base = args.output or cfg.output or DEFAULT_OUTPUT
        name = args.name or submission_id() or kind
        self.final = join(base, name)
        if is_uri(base) and not base.startswith("file://"):
            scratch = Path(os.environ.get("EVOMERGE_JOB_SCRATCH", tempfile.gettempdir())) / "evomerge-jobs" / name
            self.local = scratch
            shutil.rmtree(scratch, ignore_errors=True)  # the object store holds the truth
            if args.resume:
                fetch_dir(self.final, scratch)
        else:
            self.local = Path(resolve(self.final)[1])

    def publish(self) -> str:
        out = publish_dir(self.local, self.final)
        print(f"evomerge job results: {mask_uri(out)}", flush=True)
        return out


def main_guard(fn) -> int:
    """Run ``fn()``; a user error prints ``error: ...`` and exits 2 (the job shows FAILED)."""
    try:
        fn()
    except EvomergeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
