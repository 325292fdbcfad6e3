"""The report's second core on a run with cells to do: a side process that does the report's
work that can start before the last cell, and half of the rest after it.

From the start of the search phase (:func:`start`), the child

- reads each cell's scores and examples file as it appears (:class:`RunFiles`: a file never
  changes once written, so reading it early is reading it at the end);
- draws each method's weight histogram as soon as that method's cells at its largest k are on
  disk, while the other cells run (the driver tells it which search cells the stop skipped);
- once the driver says every cell is on disk (:meth:`SideJob.close_input`), computes the
  evaluation noise of the validation split and draws the fitness figure, which shows it.

The driver's report meanwhile computes the other splits' noise and judges the rules
(:func:`evomerge.pipelines.scale.report.write_report` with ``side=``). Every file equals the one
``evomerge report`` writes in one process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from evomerge.pipelines.scale.plan import Cell, load_cells
from evomerge.pipelines.scale.side import Inbox, SideJob
from evomerge.pipelines.scale.store import EXAMPLE_SCHEMA, SCORE_SCHEMA, CellStore, table_files

SIDE_SPLITS = ("validation",)  # the noise the side process computes; the driver's report computes the others
POLL_S = 0.2


class RunFiles:
    """A run's ``cells/`` and ``examples/`` files, each read once, as :class:`CellStore` reads
    them (:meth:`scores` and :meth:`examples` return the same tables); :meth:`poll` reads the
    files that appeared since the last call, :meth:`follow` polls in a thread until stopped."""

    def __init__(self, run_dir: str | Path):
        self.store = CellStore(run_dir)
        self._tables: dict[Path, pa.Table] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, path: Path) -> pa.Table:
        with self._lock:
            table = self._tables.get(path)
        if table is None:
            folder = "cells" if path.parent == self.store.cells_dir else "examples"
            table = getattr(self.store, "scores" if folder == "cells" else "examples")([path.stem])
            with self._lock:
                self._tables[path] = table
        return table

    def poll(self) -> None:
        for folder in (self.store.cells_dir, self.store.examples_dir):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in sorted(names):
                if _is_table(name) and folder / name not in self._tables:
                    self._read(folder / name)

    def follow(self, every: float = 0.25) -> "RunFiles":
        """Poll in a thread until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(every):
                self.poll()

        self._thread = threading.Thread(target=loop, name="report-read-ahead", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _concat(self, folder: Path, schema: pa.Schema, ids: Iterable[str] | None) -> pa.Table:
        files = table_files(folder, ids)
        return pa.concat_tables([self._read(f) for f in files]) if files else schema.empty_table()

    def scores(self, ids: Iterable[str] | None = None) -> pa.Table:
        return self._concat(self.store.cells_dir, SCORE_SCHEMA, ids)

    def examples(self, ids: Iterable[str] | None = None) -> pa.Table:
        return self._concat(self.store.examples_dir, EXAMPLE_SCHEMA, ids)


def histogram_levels(cells: list[Cell], expected: set[str]) -> dict[str, list[tuple[int, list[str], list[str]]]]:
    """Per method, from its largest k down: ``(k, the cells at k this run will have written, every
    plan cell at k)``. The histogram shows the largest k with a sample file
    (:func:`~evomerge.pipelines.scale.report_figures.histogram_samples`): known once every
    expected cell of that k and of the k above it is on disk."""
    by: dict[str, dict[int, tuple[list[str], list[str]]]] = {}
    for c in cells:
        exp, every = by.setdefault(c.method, {}).setdefault(c.k, ([], []))
        every.append(c.id)
        if c.id in expected:
            exp.append(c.id)
    return {m: [(k, *ks[k]) for k in sorted(ks, reverse=True)] for m, ks in by.items()}


def start(run_dir: Path, expected: set[str]) -> SideJob:
    """The side process, sent its work (:meth:`SideJob.close_input` once every cell of
    ``expected`` is on disk); this process imports the report's modules in a thread meanwhile."""
    job = SideJob.warm(run_side)
    job.send(str(run_dir), sorted(expected), keep_open=True)
    threading.Thread(target=_import_report, name="report-imports", daemon=True).start()
    return job


def _import_report() -> None:
    import evomerge.pipelines.scale.law_noise  # noqa: F401
    import evomerge.pipelines.scale.report  # noqa: F401
    import evomerge.pipelines.scale.report_figures  # noqa: F401
    import evomerge.pipelines.scale.report_md  # noqa: F401
    import evomerge.pipelines.scale.rules  # noqa: F401


def run_side(run_dir: str, expected: list[str]) -> dict[str, Any]:
    """What the child does (see the module's docstring): ``{"histograms": {name: path},
    "fitness_figure": {name: path}, "noise": Noise of SIDE_SPLITS}``. Messages from the driver
    (:meth:`SideJob.tell`): the cells it will have written, anew (the searches' stop skipped some)."""
    run_dir, parent = Path(run_dir), os.getppid()
    files, inbox = RunFiles(run_dir), Inbox()

    def driver_gone() -> None:
        if os.getppid() != parent:
            raise RuntimeError("the scale run's driver exited before its cells were done")

    histograms = draw_histograms(run_dir, set(expected), inbox.closed, files, news=inbox.take, check=driver_gone)
    return {"histograms": histograms, **report_part(run_dir, files)}


def draw_histograms(run_dir: Path, expected: set[str], closed: threading.Event, files: RunFiles | None = None,
                    news=lambda: [], check=lambda: None) -> dict[str, str]:
    """Each method's weight histogram as soon as it is known (:func:`histogram_levels`), every
    one left once ``closed`` is set (every cell on disk); ``news()``: new ``expected`` sets
    (the last counts); ``files`` reads the cells' files meanwhile; ``check()`` may raise to give
    up. ``{name: path}`` as :func:`~evomerge.pipelines.scale.report_figures.weight_histograms` gives it."""
    from evomerge.pipelines.scale.report import load_plan

    store = CellStore(run_dir)
    cells = load_cells(load_plan(run_dir))
    levels = histogram_levels(cells, expected)
    drawn: dict[str, dict[str, str]] = {}
    while True:
        last = closed.is_set()  # every cell is on disk (or the driver is gone: check): draw what is left
        check()
        update = news()
        if update:
            levels = {m: lv for m, lv in histogram_levels(cells, set(update[-1])).items() if m in levels}
        done = store.done()
        for method in list(levels):
            ids = _histogram_ids(store, levels[method], done, final=last)
            if ids is None:
                continue
            del levels[method]
            if ids:
                drawn[method] = _draw(run_dir, ids)
        if files is not None:
            files.poll()
        if last:
            return {name: path for method in sorted(drawn) for name, path in drawn[method].items()}
        closed.wait(POLL_S)


def _is_table(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(".")  # (an atomic writer's temporary: .NAME.tmp-*)


def _histogram_ids(store: CellStore, levels, done: set[str], *, final: bool) -> list[str] | None:
    """The cells whose samples a method's histogram shows ([]: none has samples), or None when
    not known yet (``final``: every cell is on disk, the answer is known)."""
    have = {p.stem for p in store.samples_dir.glob("*.parquet")} if store.samples_dir.is_dir() else set()
    for _, exp, every in levels:
        if not final and not set(exp) <= done:
            return None
        ids = [i for i in every if i in have]
        if ids:
            return ids
    return []


def _draw(run_dir: Path, ids: list[str]) -> dict[str, str]:
    from evomerge.pipelines.scale.report_figures import weight_histograms

    return weight_histograms(CellStore(run_dir).samples(ids).to_pandas(), run_dir / "figures")


def report_part(run_dir: Path, files: RunFiles) -> dict[str, Any]:
    """The side process's share of the report: the noise of :data:`SIDE_SPLITS` and the fitness figure."""
    from evomerge.config import load_config
    from evomerge.pipelines.scale.noise import noise_tables
    from evomerge.pipelines.scale.report import load_run, split_examples
    from evomerge.pipelines.scale.report_figures import fitness_figure
    from evomerge.pipelines.scale.tables import fitness_table

    plan, scores, _ = load_run(run_dir, samples=False, files=files)
    fitness = fitness_table(scores)
    examples = split_examples(run_dir, scores, files)
    side = scores["split"].isin(SIDE_SPLITS)
    ex_side = None if examples is None else examples[examples["split"].isin(SIDE_SPLITS)]
    noise = noise_tables(scores[side], ex_side, fitness)
    metric = load_config(run_dir / "config.yaml").evaluation.metric
    # no `incomplete=`: this runs once the driver closed the input (SideJob.close_input), after every
    # cell it expects is on disk (the searches' stop skipped the rest, as search_stop.json says), and
    # the report uses the result only then (else it stops the job): no curve has a cell missing
    figure = fitness_figure(plan, fitness, run_dir / "figures", metric, noise.table)
    return {"noise": noise, "fitness_figure": figure}
