"""What a scale run computes: the variance-drop stop rule and the list of cells.

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
from evomerge.theory.variance import adaptive_delta, n_max, variance_curve


@dataclass(frozen=True)
class StopRule:
    """Theorem 1's stop rule for one pool. ``k_end`` is the largest k the run computes."""

    sigma2: float
    rho: float
    delta: float
    delta_mode: Literal["adaptive", "fixed"]
    n_available: int
    n_max: int
    enabled: bool
    k_end: int
    curve: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def stop_rule(sigma2: float, rho: float, n_available: int, cfg: ScaleConfig, *, stop: bool | None = None) -> StopRule:
    """Delta (fixed or adaptive), n_max and the last k to run (n_max when stopping, else the pool)."""
    if n_available < 2:
        raise ConfigError(f"the scale experiment needs at least 2 experts; the pool has {n_available}")
    if cfg.delta == "adaptive":
        delta, mode = adaptive_delta(sigma2, rho, n_available), "adaptive"
    else:
        delta, mode = float(cfg.delta), "fixed"
    nm = n_max(sigma2, rho, delta)
    enabled = cfg.stop if stop is None else stop
    k_hi = min(n_available, cfg.k_max or n_available)
    if cfg.k_min > k_hi:
        raise ConfigError(f"`scale.k_min` ({cfg.k_min}) is larger than the largest k ({k_hi}: pool size / `scale.k_max`)")
    k_end = max(cfg.k_min, min(k_hi, nm)) if enabled else k_hi
    return StopRule(
        sigma2=float(sigma2), rho=float(rho), delta=float(delta), delta_mode=mode, n_available=n_available,
        n_max=int(nm), enabled=bool(enabled), k_end=int(k_end), curve=variance_curve(sigma2, rho, k_hi, delta),
    )


@dataclass(frozen=True)
class Cell:
    kind: Literal["base", "expert", "merge", "search"]
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
) -> list[Cell]:
    """Every cell of the run, in execution order (by k, then method, rht, seed).

    ``orders[seed]`` is the expert order for that seed; ``random_methods`` names the registry
    methods that draw random numbers (their seed matters even with RHT off).
    """
    if not cfg.seeds:
        raise ConfigError("`scale.seeds` must list at least one seed")
    cells: list[Cell] = []
    for seed, group in _seed_groups(cfg.seeds, False):
        cells.append(Cell("base", 0, "base", False, seed, group, ()))
    for seed, group in _seed_groups(cfg.seeds, order_random):
        cells.append(Cell("expert", 1, "expert", False, seed, group, tuple(orders[seed][:1])))
    rhts = (False, True) if cfg.with_rht else (False,)
    search_k = set(cfg.search_k) if cfg.search_k is not None else None
    for k in range(cfg.k_min, k_end + 1):
        for method in cfg.methods:
            for rht in rhts:
                matters = order_random or rht or method in random_methods
                for seed, group in _seed_groups(cfg.seeds, matters):
                    cells.append(Cell("merge", k, method, rht, seed, group, tuple(orders[seed][:k])))
        if k < 2 or (search_k is not None and k not in search_k):
            continue
        for method in cfg.search:
            for seed, group in _seed_groups(cfg.seeds, True):
                cells.append(Cell("search", k, method, cfg.with_rht, seed, group, tuple(orders[seed][:k])))
    return cells


def load_cells(plan: dict) -> list[Cell]:
    """The cells listed in a run's ``plan.json``."""
    return [Cell(**{**c, "seeds": tuple(c["seeds"]), "experts": tuple(c["experts"])}) for c in plan["cells"]]
