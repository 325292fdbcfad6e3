"""What a scale run computes: the stop rules' inputs and the list of cells.

A *cell* is one unit of Ray work: merge the first k experts (in the run's order) with one
method, optionally apply RHT, and evaluate on validation and test. Cells whose result cannot
depend on the seed (a deterministic method, no RHT, a seed-independent order) run once and
their rows are written for every seed, so spreads are honest and no work is repeated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

from evomerge.config.sections import ScaleConfig
from evomerge.errors import ConfigError
from evomerge.theory.general_variance import covariance_from, general_variance_curve, reaches_delta, theorem1_rule


def delta_mode(cfg: ScaleConfig) -> tuple[str, float | None]:
    """``(mode, value)`` of ``scale.delta``: fixed (the number), relative (the fraction), adaptive."""
    if cfg.delta == "adaptive":
        return "adaptive", None
    if cfg.delta == "relative":
        return "relative", cfg.delta_fraction
    return "fixed", float(cfg.delta)


def min_experts(cfg: ScaleConfig) -> int:
    """The pool size the rules need: 3 distinct k for the online rule; for the law, its
    ``law_first_k`` points and at least one k beyond them to predict."""
    return max(3, cfg.law_first_k + 1)


def check_pool_for_rules(cfg: ScaleConfig, n_available: int) -> None:
    """Refuse a pool smaller than :func:`min_experts`, naming what each rule needs."""
    need = min_experts(cfg)
    if n_available < need:
        raise ConfigError(f"the scale experiment's stop rules need at least {need} experts (3 distinct k for the "
                          f"online rule's 3 parameters; the law fitted on k <= `scale.law_first_k` = "
                          f"{cfg.law_first_k} and a k beyond it to predict); the pool has {n_available}")


@dataclass(frozen=True)
class StopRule:
    """The stop rules of one pool. Registry merges always run to ``k_end`` (the pool size or
    ``scale.k_max``) so every rule is judged against a measured curve; ``rule`` (when
    ``enabled``) stops the searches' k grid. ``theorem1`` is Theorem 1's general form along the
    first seed's order with uniform weights (the searches' rule when ``rule == "theorem1"``;
    the report recomputes it with each registry method's weights)."""

    sigma2: float
    rho: float
    delta_mode: str
    delta_value: float | None
    n_available: int
    rule: str
    enabled: bool
    k_end: int
    n_max: int  # theorem1's fired k (uniform weights, first order)
    delta: float | None  # None: a relative/adaptive Delta without a positive drop to scale (theorem1_rule)
    search_k: list[int] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def search_grid(k_end: int, search_k: Sequence[int] | None) -> list[int]:
    """k where the searches run: ``search_k`` (within 2..k_end) or every k from 2 to k_end (the
    online rule cuts it short; a coarser grid could not stop within one k of a peak)."""
    if search_k is not None:
        return sorted({k for k in search_k if 2 <= k <= k_end})
    return list(range(2, k_end + 1))


def stop_rule(variances, corr, order: Sequence[int], cfg: ScaleConfig, *, sigma2: float, rho: float,
              stop: bool | None = None) -> StopRule:
    """Theorem 1 (general form, along ``order``) and the run's k range."""
    import numpy as np

    n_available = len(order)
    check_pool_for_rules(cfg, n_available)
    need = min_experts(cfg)
    enabled = cfg.stop if stop is None else stop
    k_hi = min(n_available, cfg.k_max or n_available)
    if cfg.k_min > k_hi:
        raise ConfigError(f"`scale.k_min` ({cfg.k_min}) is larger than the largest k ({k_hi}: pool size / `scale.k_max`)")
    if k_hi < need:
        raise ConfigError(f"`scale.k_max` ({k_hi}) is below what the stop rules need ({need} k)")
    mode, value = delta_mode(cfg)
    cov = covariance_from(variances, np.asarray(corr))
    v = general_variance_curve(cov, list(order))
    delta, fire = theorem1_rule(v, mode, value)  # (None: no positive drop to scale; rules.py reads it so too)
    fired_k = fire.fired_k
    curve = [{"k": k + 1, "merged_variance": float(v[k]), "drop": float(v[k - 1] - v[k]) if k else None,
              "worth_adding": bool(k == 0 or (reaches_delta(v[k - 1] - v[k], delta) if delta is not None
                                                else v[k - 1] - v[k] > 0))}
             for k in range(len(v))]
    grid = search_grid(k_hi, cfg.search_k)
    if enabled and cfg.stop_rule == "theorem1":
        grid = [k for k in grid if k <= max(2, fired_k)]
    return StopRule(
        sigma2=float(sigma2), rho=float(rho), delta_mode=mode, delta_value=value, n_available=n_available,
        rule=cfg.stop_rule, enabled=bool(enabled), k_end=int(k_hi), n_max=int(fired_k), delta=delta,
        search_k=grid, curve=curve,
    )


@dataclass(frozen=True)
class Cell:
    kind: Literal["base", "expert", "merge", "search", "pair"]
    k: int
    method: str
    rht: bool  # search cells: True means "also evaluate the best candidate with RHT"
    seed: int
    seeds: tuple[int, ...]  # the seeds whose rows this cell's result stands for
    experts: tuple[int, ...]  # pool indices merged, in the order they were added

    @property
    def id(self) -> str:
        if self.kind == "search":  # one search serves both variants: rows without and (rht) with RHT
            return f"k{self.k:03d}-{self.method}-s{self.seed}"
        if self.kind == "pair":
            return f"pair-{self.experts[0]}-{self.experts[1]}-{self.method}-s{self.seed}"
        return f"k{self.k:03d}-{self.method}-{'rht' if self.rht else 'plain'}-s{self.seed}"


def _seed_groups(seeds: Sequence[int], matters: bool) -> list[tuple[int, tuple[int, ...]]]:
    seeds = list(dict.fromkeys(seeds))
    return [(s, (s,)) for s in seeds] if matters else [(seeds[0], tuple(seeds))]


def build_cells(
    cfg: ScaleConfig,
    orders: dict[int, list[int]],
    k_end: int,
    *,
    random_methods: frozenset[str],
    order_random: bool,
    search_k: Sequence[int] | None = None,
    pairs: Sequence[tuple[int, int]] = (),
) -> list[Cell]:
    """Every cell of the run, in execution order (by k, then method, rht, seed).

    ``orders[seed]`` is the expert order for that seed; ``random_methods`` names the registry
    methods that draw random numbers (their seed matters even with RHT off). ``search_k``: the
    searches' k grid (default :func:`search_grid`); ``pairs``: expert pairs merged on their own
    for the correlated-pair experiment (cells of kind ``pair``, no RHT).
    """
    if not cfg.seeds:
        raise ConfigError("`scale.seeds` must list at least one seed")
    cells: list[Cell] = []
    for seed, group in _seed_groups(cfg.seeds, False):
        cells.append(Cell("base", 0, "base", False, seed, group, ()))
    for seed, group in _seed_groups(cfg.seeds, order_random):
        cells.append(Cell("expert", 1, "expert", False, seed, group, tuple(orders[seed][:1])))
    rhts = (False, True) if cfg.with_rht else (False,)
    grid = set(search_grid(k_end, cfg.search_k) if search_k is None else search_k)
    for k in range(cfg.k_min, k_end + 1):
        for method in cfg.methods:
            for rht in rhts:
                matters = order_random or rht or method in random_methods
                for seed, group in _seed_groups(cfg.seeds, matters):
                    cells.append(Cell("merge", k, method, rht, seed, group, tuple(orders[seed][:k])))
        if k < 2 or k not in grid:
            continue
        for method in cfg.search:
            for seed, group in _seed_groups(cfg.seeds, True):
                cells.append(Cell("search", k, method, cfg.with_rht, seed, group, tuple(orders[seed][:k])))
    for pair in pairs:
        for method in cfg.methods:
            matters = method in random_methods
            for seed, group in _seed_groups(cfg.seeds, matters):
                cells.append(Cell("pair", 2, method, False, seed, group, tuple(pair)))
    return cells


def load_cells(plan: dict) -> list[Cell]:
    """The cells listed in a run's ``plan.json``."""
    return [Cell(**{**c, "seeds": tuple(c["seeds"]), "experts": tuple(c["experts"])}) for c in plan["cells"]]
