"""The scale run's pool analysis (PCA, principal angles, correlation, tails, figures).

Nothing the run computes reads it (only the report does), so a fresh run starts it in a process
of its own (:func:`start_analysis`) beside the driver's serial start (each expert scored alone,
the plan) and the first cells. It always runs on one torch thread, as it did when the driver ran
it after the gains' :class:`~evomerge.pipelines.scale.work.CellWorker` had set one thread: its
numbers are the same wherever it runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from evomerge.config import EvomergeConfig
from evomerge.pipelines.scale.side import SideJob


def run_analysis(spec, cfg: EvomergeConfig, out_dir: Path, progress: bool = False) -> None:
    """The pool analysis once per run directory (``spec``: the driver's ``PoolSpec``)."""
    if (out_dir / "summary.json").is_file():
        return
    import torch

    from evomerge.analysis import analyze_pool
    from evomerge.experts import load_pool

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = load_pool(spec.paths, spec.base_dir, allow_bin=cfg.experts.allow_bin, names=spec.names)
        analyze_pool(pool, out_dir, names=spec.names, delta=cfg.scale.delta, delta_fraction=cfg.scale.delta_fraction,
                     rht_cfg=cfg.rht, seed=cfg.seed, overwrite=True, progress=progress)
    finally:
        torch.set_num_threads(threads)


def start_analysis(stack: contextlib.ExitStack, spec, cfg: EvomergeConfig, out_dir: Path) -> SideJob:
    """:func:`run_analysis` in a child process; ``stack`` waits for it on exit. Call
    ``.result()`` on the returned job to wait and to see its error."""
    job = SideJob(run_analysis, spec, cfg, Path(out_dir), False)
    stack.callback(job.wait)
    return job
