"""The scale run's pool analysis (PCA, principal angles, correlation, tails, figures).

Nothing the run computes reads it (only the report does), so a fresh run starts it in a process
of its own (:func:`start_analysis`) beside the driver's serial start (each expert scored alone,
the plan) and the first cells. It always runs on one torch thread, as it did when the driver ran
it after the gains' :class:`~evomerge.pipelines.scale.work.CellWorker` had set one thread: its
numbers are the same wherever it runs. ``evomerge scale`` starts that child (warm, its imports
done) before its own imports (:func:`prewarm_analysis`), when one core is otherwise idle.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge.pipelines.scale.side import SideJob

if TYPE_CHECKING:
    from evomerge.config import EvomergeConfig


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


_prewarmed: SideJob | None = None


def prewarm_analysis() -> None:
    """Start the analysis's child now, before the caller's own imports: it does its imports
    (about 2 s of one core, torch among them) while the caller does its, and :func:`start_analysis`
    then hands it the arguments instead of starting a child. Call :func:`discard_prewarmed` when
    the run is over (a child not used exits without running)."""
    global _prewarmed
    if _prewarmed is None:
        _prewarmed = SideJob.warm("evomerge.pipelines.scale.analysis_job:run_analysis")


def discard_prewarmed() -> None:
    """End a prewarmed child that no run used (a resumed run, one without the analysis)."""
    global _prewarmed
    job, _prewarmed = _prewarmed, None
    if job is not None:  # it has run nothing and written nothing: no need to wait for its imports
        job.proc.kill()
        job.wait()


def start_analysis(stack: contextlib.ExitStack, spec, cfg: EvomergeConfig, out_dir: Path) -> SideJob:
    """:func:`run_analysis` in a child process (the prewarmed one, if any); ``stack`` waits for
    it on exit. Call ``.result()`` on the returned job to wait and to see its error."""
    global _prewarmed
    job, _prewarmed = _prewarmed, None
    args = (spec, cfg, Path(out_dir), False)
    if job is not None:
        try:
            job.send(*args)
        except OSError:  # it died while warming (its pipe is closed): a fresh child shows why
            job.wait()
            job = None
    if job is None:
        job = SideJob(run_analysis, *args)
    stack.callback(job.wait)
    return job
