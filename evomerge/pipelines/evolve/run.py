"""``run_evolve``: GENOME or Model Swarms on Ray population actors, with records and resume.

The loop (the driver owns it): ask every island's search for recipes -> the population actors
materialise and score them -> tell -> append the round's rows to the Parquet history -> keep
the individuals the searches still reference -> checkpoint (weights as safetensors + search
state) atomically. ``resume=True`` restarts from the newest checkpoint; searches carry no RNG
state (every draw is derived from the seed and the generation), so a resumed run ends exactly
like an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from evomerge.config import EvomergeConfig
from evomerge.pipelines.evolve import records
from evomerge.pipelines.fingerprint import check_unchanged, config_fingerprint
from evomerge.pipelines.inputs import EvolveInputs, check_user_tasks, prepare_inputs
from evomerge.errors import ConfigError, OutputExistsError
from evomerge.io import check_writable, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvolveResult:
    best_id: str
    best_fitness: float
    best_val_per_task: dict[str, float]
    best_test_per_task: dict[str, float]
    best_test_fitness: float | None
    history_path: Path
    adapter_dir: Path | None  # best_adapter/: a peft LoRA adapter (LoRA pools); None for full fine-tunes
    final_val_fitness: float | None = None  # validation of the written result (after a final RHT)
    # best_task_vector/task_vector.safetensors: the dense result (full fine-tunes, LoRA delta space)
    task_vector_dir: Path | None = None
    # an adapter made from the dense result by truncated SVD: ranks, relative error, its validation fitness
    adapter_svd: dict[str, Any] | None = None
    expert_fitness: dict[str, float] = field(default_factory=dict)
    ensemble: dict[str, Any] | None = None
    rounds: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundInfo:
    """What ``on_generation`` callbacks receive after each round's checkpoint."""

    step: int
    generation: int
    best_fitness: float
    mean_fitness: float
    n_evaluated: int
    seconds: float


def check_static(cfg: EvomergeConfig, algo: str, n_experts: int | None = None) -> None:
    """Refuse combinations the config schema alone cannot see (before Ray or any loading);
    with ``n_experts`` known, also what the search refuses for that pool size."""
    from evomerge.search import check_search_name

    check_search_name(algo, "--algo")
    if algo == "swarm" and cfg.ray.islands > 1:
        raise ConfigError("`ray.islands` > 1 needs migration, which only GENOME supports; use islands: 1 with swarm")
    if n_experts is not None:
        make_searches(cfg, algo, n_experts)


def _zoo_size(cfg: EvomergeConfig, profile: str) -> int | None:
    """The number of experts of the built-in zoo, from its profile (nothing is read); None for a
    zoo in ``zoo_dir``, which may be of any profile (its checks come once it is opened)."""
    from evomerge.zoo.model import PROFILES

    return len(PROFILES[profile].tasks) if cfg.zoo_dir is None and profile in PROFILES else None


def make_searches(cfg: EvomergeConfig, algo: str, n_experts: int) -> list[Any]:
    """One search object per island (distinct id prefixes and seeds)."""
    from evomerge.search import check_search_name, make_search

    check_search_name(algo, "--algo")
    if n_experts < 2:
        raise ConfigError(f"evolutionary search needs at least 2 experts. Got {n_experts} instead.")
    n = cfg.ray.islands
    return [make_search(algo, cfg, n_experts, cfg.seed + 7919 * i, prefix=f"i{i}/" if n > 1 else "") for i in range(n)]


def _run_meta(cfg: EvomergeConfig, algo: str, inputs: EvolveInputs | None, zoo_profile: str,
              fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must match for a resume (the Ray placement, e.g. actors or address, may change);
    without ``inputs`` (not resolved yet) the experts and tasks are left out. The built-in zoo's
    profile (no experts in the config) is recorded so that another ``--zoo`` is refused before
    Ray starts; your own files' sha256 (``fingerprint``) so that changed files are
    (:func:`~evomerge.pipelines.fingerprint.check_unchanged`)."""
    search_cfg = cfg.model_dump(mode="json", exclude={"ray", "output"})
    search_cfg["islands"] = {"n": cfg.ray.islands, "migration_interval": cfg.ray.migration_interval}
    meta = {"algo": algo, "config": search_cfg}
    if not cfg.experts.experts:
        meta["zoo"] = zoo_profile
    if fingerprint is not None:
        meta["inputs"] = fingerprint
    if inputs is not None:
        meta.update(experts=inputs.names, tasks=inputs.tasks)
    return meta


def _check_out(out_dir: Path, meta: dict[str, Any], resume: bool) -> None:
    """Refuse an ``--out`` the run cannot use, writing nothing: an existing run without
    ``resume``, a resume where no run is (a folder of another command, say a tune run, or none),
    a folder that is not a run, a resume whose recorded ``meta`` differs or whose ``run.json`` is
    not a run's record, a place that cannot be written (:func:`evomerge.io.check_writable`). Only the keys present
    in ``meta`` are compared: before Ray starts, ``run_evolve`` checks ``algo`` and ``config``
    (known from the arguments alone); the experts and tasks once the inputs are resolved."""
    meta_path = out_dir / "run.json"
    if meta_path.is_file():
        if not resume:
            raise OutputExistsError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
        old = _read_meta(meta_path)
        for key in ("algo", "zoo", "experts", "tasks", "config"):
            # (a run recorded before `zoo` was: its experts, once resolved, tell)
            if key in meta and (key in old or key != "zoo") and old.get(key) != meta[key]:
                from evomerge.config.base import config_diff

                what = (", ".join(config_diff(old.get(key) or {}, meta[key])[:6]) + " (there -> now)"
                        if key == "config" else f"{old.get(key)!r} there, {meta[key]!r} now")
                raise ConfigError(f"{meta_path}: cannot resume: `{key}` differs from the interrupted run ({what})")
    elif resume:
        raise ConfigError(f"--resume: {out_dir} holds no evolve run to continue (no run.json); check --out, or drop --resume")
    elif out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a directory")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir}: exists and is not an evomerge evolve run directory (no run.json)")
    # a place the run cannot write (under /proc or /sys, read-only): the folder itself when it
    # exists (a resume writes into it), else the nearest existing folder above it
    check_writable(out_dir / "run.json" if out_dir.is_dir() else out_dir)


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``run.json`` of an earlier run; one that cannot be read as a run's record is refused."""
    try:
        old = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{meta_path}: cannot resume: not a readable evolve run record ({err})") from None
    if not isinstance(old, dict) or "algo" not in old or not isinstance(old.get("config"), dict):
        raise ConfigError(f"{meta_path}: cannot resume: not an evolve run record (no `algo` and `config`)")
    return old


def check_experts(cfg: EvomergeConfig, tasks: Sequence[str] | None = None) -> None:
    """The config's own experts, before Ray starts (seconds) or the actors load them: they exist,
    are adapters or checkpoints of one kind that fit each other and the base (the pool loader's
    checks of headers, shapes, target modules and base, without reading every value: the actors
    do as they load), and the base is given; then the task files of ``tasks`` (default: those the
    run evaluates), read by the actors' own loader (:func:`~evomerge.pipelines.inputs.check_user_tasks`).
    The built-in zoo needs none of this."""
    if not cfg.experts.experts:
        return
    from evomerge.experts.pool import load_pool

    specs = cfg.experts.experts
    load_pool([s.path for s in specs], base=cfg.experts.base, allow_bin=cfg.experts.allow_bin,
              names=[s.name for s in specs], values=False)  # (the values: as the actors load them)
    if cfg.experts.base is None:
        raise ConfigError("`experts.base`: evolutionary search evaluates merges, so it needs the base model")
    from evomerge.evaluation.evaluator import REPORTED_SPLITS

    check_user_tasks(cfg, tasks, whole_splits=REPORTED_SPLITS)  # (the rows the actors will encode)


def _prepare_out(out_dir: Path, meta: dict[str, Any], resume: bool) -> None:
    _check_out(out_dir, meta, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "run.json", meta)


def run_evolve(
    cfg: EvomergeConfig,
    algo: str,
    out_dir: str | Path,
    *,
    resume: bool = False,
    experts: Sequence[str | int] | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
    zoo_profile: str = "small",
    write_adapter: bool = True,
    svd_adapter: bool = True,
    report_test: bool = True,
    on_generation: Callable[[RoundInfo], None] | None = None,
    on_dispatch: Callable[[int, Any], None] | None = None,
    runtime: Any = None,
) -> EvolveResult:
    """Run (or resume) an evolutionary merge; see the module docstring.

    experts: names or indices of a subset of the pool (the scale driver passes k experts).
    on_generation: called after every round's checkpoint (Optuna reports/prunes from here;
        an exception stops the run, which ``resume=True`` continues).
    on_dispatch: called while a round's work is in flight (fault-injection in tests).
    runtime: an open :class:`~evomerge.distributed.runtime.Runtime` whose actors (and loaded
        evaluator) are reused, e.g. by the scale driver's many runs; its placement is used.
    write_adapter: write the best individual at all; svd_adapter: also turn a dense LoRA result
        into ``best_adapter/`` (an SVD and one more evaluation; the scale driver reads the exact
        ``best_task_vector/`` and skips it).
    report_test: score the returned model (and GENOME's ensemble) on test, every row; the scale
        driver scores each search cell's result itself and skips it (``best_test_fitness`` null).
    """
    from evomerge.distributed.runtime import Runtime
    from evomerge.io import run_lock

    out_dir = Path(out_dir)
    known = len(experts) if experts is not None else (len(cfg.experts.experts) or _zoo_size(cfg, zoo_profile))
    check_static(cfg, algo, known)
    # the output checks that need no inputs, before Ray starts (seconds) or anything loads
    _check_out(out_dir, _run_meta(cfg, algo, None, zoo_profile), resume)
    fingerprint = None
    if runtime is None:  # (a runtime given: Ray is up and the inputs are read right away; scale's
        # search cells, whose run records its own fingerprint)
        check_experts(cfg, tasks)
        fingerprint = config_fingerprint(cfg)
        if resume:  # (the record itself was checked above)
            check_unchanged(out_dir / "run.json", fingerprint, where=f"{out_dir / 'run.json'}: cannot resume",
                            error=ConfigError, advice="its checkpointed population was scored on the old ones: "
                                                      "start a new run in another --out")
    with contextlib.ExitStack() as stack:
        if runtime is None:  # (scale's search cells: the scale run holds its folder's lock)
            stack.enter_context(run_lock(out_dir, "evolve"))
        # connecting checks the request against the cluster: impossible ones fail before any work
        rt = runtime if runtime is not None else stack.enter_context(Runtime(cfg))
        # (the actors' evaluators score test, reported only, on every row: inputs.EvaluatorSpec.whole_splits;
        # not at all here without report_test, so they need not hold every test row)
        inputs = prepare_inputs(cfg, experts=experts, tasks=tasks, zoo_profile=zoo_profile, space=getattr(cfg, algo).space)
        if not report_test:
            inputs = dataclasses.replace(inputs, evaluator=dataclasses.replace(inputs.evaluator, whole_splits=()))
        searches = make_searches(cfg, algo, len(inputs.names))
        _prepare_out(out_dir, _run_meta(cfg, algo, inputs, zoo_profile, fingerprint), resume)
        per_candidate = cfg.rht if (cfg.rht.enabled and cfg.rht.apply_to == "candidate") else None
        try:
            rt.start(inputs, rht=per_candidate).on_dispatch = on_dispatch
        except BaseException:
            if not resume:  # nothing ran (e.g. the actors could not be placed): a rerun needs no --resume
                (out_dir / "run.json").unlink(missing_ok=True)
            raise
        loop = _Loop(cfg, inputs, searches, rt, out_dir, progress, on_generation)
        loop.start(resume)
        loop.run()
        return loop.finish(write_adapter, svd_adapter, report_test)


class _Loop:
    """The generations of one run; a class only to share state between start/run/finish."""

    def __init__(self, cfg, inputs, searches, rt, out_dir, progress, on_generation) -> None:
        self.cfg, self.inputs, self.searches, self.rt = cfg, inputs, searches, rt
        self.pool = rt.pool
        self.out_dir, self.progress, self.on_generation = out_dir, progress, on_generation
        self.step = 0
        self.expert_fitness: dict[str, float] = {}

    # ---------------------------------------------------------------- start / resume
    def start(self, resume: bool) -> None:
        ckpt = records.load_checkpoint(self.out_dir) if resume else None
        if ckpt is None:
            records.truncate_history(self.out_dir, -1)
            self.expert_fitness = self.rt.score_experts()
            self.pool.reset_timings()  # stats cover the generations only
            return
        step, weights, state = ckpt
        for s, sd in zip(self.searches, state["searches"]):
            s.load_state_dict(sd)
        self.pool.restore(weights, state.get("location"))
        self.expert_fitness = dict(state["expert_fitness"])
        records.truncate_history(self.out_dir, step)
        self.step = step + 1
        log.info("resumed %s at round %d", self.out_dir, self.step)

    # ---------------------------------------------------------------- generations
    def run(self) -> None:
        while True:
            active = [i for i, s in enumerate(self.searches) if not s.done]
            if not active:
                return
            t0 = time.perf_counter()
            asked = {i: self.searches[i].ask() for i in active}
            gens = {i: self.searches[i].generation for i in active}
            rows = self.pool.evaluate([r for i in active for r in asked[i]])
            for i in active:
                self.searches[i].tell({r.id: rows[r.id].fitness for r in asked[i]})
            self._migrate(gens)
            table = records.history_table(
                [self._row(i, r, rows[r.id]) for i in active for r in asked[i]], self.inputs.tasks
            )
            records.write_history_step(self.out_dir, self.step, table)
            referenced = set().union(*(s.referenced_ids() for s in self.searches))
            self.pool.sync(referenced)
            records.save_checkpoint(self.out_dir, self.step, self.pool.snapshot, self._state())
            info = self._round_info(active, asked, gens, time.perf_counter() - t0)
            if self.progress:
                from tqdm import tqdm

                tqdm.write(
                    f"round {info.step} (generation {info.generation}): best {info.best_fitness:.4f} "
                    f"mean {info.mean_fitness:.4f} ({info.n_evaluated} evaluated, {info.seconds:.1f} s)",
                    file=sys.stderr,
                )
            self.step += 1
            if self.on_generation is not None:
                self.on_generation(info)

    def _row(self, island: int, recipe: Any, row: Any) -> dict[str, Any]:
        return {"step": self.step, "island": island, "generation": recipe.generation, "id": recipe.id,
                "op": recipe.op, "parents": recipe.parents, "weights": recipe.weights, "seed": recipe.seed,
                "params": json.dumps(recipe.params, sort_keys=True), "fitness": row.fitness,
                "per_task": row.per_task}

    def _migrate(self, gens_before: dict[int, int]) -> None:
        """Ring migration: every ``migration_interval`` generations each island receives the
        best of the previous island (GENOME only; islands advance in lockstep)."""
        n = len(self.searches)
        if n < 2:
            return
        every = self.cfg.ray.migration_interval
        bests = [(s.best_id, s.best_fitness) for s in self.searches]
        for i, s in enumerate(self.searches):
            moved = i in gens_before and s.generation > gens_before[i]
            if not moved or s.done or s.generation % every != 0:
                continue
            mid, fit = bests[(i - 1) % n]
            if mid is None or mid in s.fitness:
                continue
            s.immigrate({mid: fit})

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "searches": [s.state_dict() for s in self.searches],
                "location": dict(self.pool.location), "expert_fitness": self.expert_fitness}

    def _round_info(self, active, asked, gens, seconds) -> RoundInfo:
        best = max(s.best_fitness for s in self.searches if s.best_fitness is not None)
        pop = [s.fitness[k] for s in self.searches for k in s.population if k in s.fitness]
        return RoundInfo(step=self.step, generation=max(gens.values()), best_fitness=float(best),
                         mean_fitness=float(sum(pop) / len(pop)) if pop else float("nan"),
                         n_evaluated=sum(len(a) for a in asked.values()), seconds=seconds)

    # ---------------------------------------------------------------- final
    def finish(self, write_adapter: bool, svd_adapter: bool = True, report_test: bool = True) -> EvolveResult:
        from evomerge.pipelines.evolve.final import finalize

        island = max(range(len(self.searches)), key=lambda i: (self.searches[i].best_fitness, -i))
        search = self.searches[island]
        stats = {**self.pool.stats(), "actor_info": list(self.rt.infos)}
        fin = finalize(self.cfg, self.inputs, search, self.rt, self.out_dir, write_adapter, svd_adapter, report_test)
        table = records.read_history(self.out_dir)
        history_path = self.out_dir / "history.parquet"
        if table is not None:
            write_parquet_atomic(history_path, table)
        result = EvolveResult(
            best_id=search.best_id, best_fitness=float(search.best_fitness),
            best_val_per_task=fin["val_per_task"], best_test_per_task=fin["test_per_task"],
            best_test_fitness=fin["test_fitness"], history_path=history_path, adapter_dir=fin["adapter_dir"],
            final_val_fitness=fin["val_fitness"], task_vector_dir=fin["task_vector_dir"],
            adapter_svd=fin["adapter_svd"],
            expert_fitness=self.expert_fitness, ensemble=fin["ensemble"], rounds=self.step,
            stats=stats,
        )
        write_json_atomic(self.out_dir / "result.json", asdict(result))
        return result
