"""Config sections. Each section is owned by the subsystem that reads it.

Constraints live on the fields, so the CLI, ``jobs/`` and Optuna all get the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from evomerge.config.base import Section


def _zoo_ref(value: Any) -> Any:
    from evomerge.zoo.refs import resolve_zoo_ref

    return resolve_zoo_ref(value)


#: A folder that may be given as ``zoo:<profile>/<path>``: a built-in zoo's, found on any machine.
ZooPath = Annotated[Path, BeforeValidator(_zoo_ref)]


class ExpertSpec(Section):
    path: ZooPath = Field(description="the expert's folder; `zoo:<profile>/<path>` names one of a built-in zoo")
    name: str | None = None
    task: str | None = Field(default=None, description="task this expert was trained for (for per-task serving)")

    @property
    def label(self) -> str:
        """The expert's name in tables and messages: ``name``, else its folder's name (as the pool
        loader names it)."""
        return self.name or Path(self.path).name


class ExpertsConfig(Section):
    """Where the pool lives. With no experts given, the built-in zoo is used."""
    SECTION: ClassVar[str] = "experts"

    base: ZooPath | None = Field(default=None, description="the base model's folder (`zoo:<profile>/base`: a built-in zoo's)")
    experts: list[ExpertSpec] = Field(default_factory=list)
    allow_bin: bool = Field(default=False, description="allow pickle .bin files (loaded with weights_only=True)")

    @field_validator("experts", mode="before")
    @classmethod
    def _paths_as_specs(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"path": x} if isinstance(x, (str, Path)) else x for x in v]
        return v


class RHTConfig(Section):
    """Reparameterized Heavy-Tailed post-processing (evomerge.merging.rht; docs/merging.md). The transform
    is the paper's; centre, units, norm restoration, domain and the constants' defaults are
    evomerge's choices."""
    SECTION: ClassVar[str] = "rht"

    enabled: bool = False
    centre: Literal["mean", "absolute"] = Field(
        default="mean", description="centre of the Gaussian difference: the tensor's mean, or the absolute `mu`")
    mu: float = Field(default=0.0, allow_inf_nan=False, description="the centre when centre=absolute")
    # defaults: benchmarks/rht_bound_study.py's pick on the shipped default zoo's scale cells (the best
    # trial whose worst cell seed loses at most 0.002 of validation against no RHT; docs/merging.md, RHT)
    sigma_g: float = Field(default=0.0000224521, ge=0.0, allow_inf_nan=False,
                           description="std of the Gaussian difference (in the tensor's std with units=std)")
    gamma: float = Field(default=0.999985, gt=0.0, le=1.0, allow_inf_nan=False)
    alpha: float = Field(default=0.00150412, ge=0.0, allow_inf_nan=False)
    beta: float = Field(default=265.854, ge=0.0, allow_inf_nan=False)
    units: Literal["raw", "std"] = Field(
        default="raw", description="raw: the constants act on the values as they are (the paper); std: in units of "
                                   "each tensor's std")
    preserve_norm: bool = Field(default=True, description="rescale each tensor to its Frobenius norm before RHT")
    domain: Literal["delta", "factors"] = Field(
        default="delta", description="LoRA results: transform the dense deltas B@A (delta) or the A and B factors")
    seed: int = 0
    apply_to: Literal["candidate", "final"] = Field(
        default="final", description="evolutionary search: RHT every scored candidate, or only the final result"
    )


class MergeConfig(Section):
    SECTION: ClassVar[str] = "merge"
    method: str = "task_arithmetic"
    params: dict[str, Any] = Field(default_factory=dict)
    space: Literal["delta", "ab", "concat"] = Field(
        default="delta",
        description="LoRA: merge products B@A (delta), factors separately (ab), or exact low-rank concat (linear methods)",
    )
    weights: list[float] | None = None
    rank: int | None = Field(default=None, gt=0, description="LoRA rank of the written adapter for space=delta (SVD)")
    output_format: Literal["auto", "peft", "full"] = "auto"
    data: list[Path] = Field(default_factory=list, description="local task files (.parquet, .jsonl or .json) for Fisher/RegMean")
    data_samples: int = Field(default=128, gt=0)

    @model_validator(mode="after")
    def _check_method(self) -> "MergeConfig":
        from evomerge.merging.registry import get_merge_method

        from evomerge.errors import ConfigError

        try:  # each refusal blames where its own key was set (key_error), not every flag of the section
            method = get_merge_method(self.method)
        except ConfigError as err:
            raise key_error("merge.method", str(err)) from None
        try:
            method.resolve(self.params)
        except ConfigError as err:
            raise key_error(("merge.params", "merge.method"), str(err)) from None
        if self.space == "concat" and not method.linear:
            raise key_error(("merge.space", "merge.method"), f"merge space `concat` needs a linear method; `{self.method}` is not linear")
        return self


class EvaluationConfig(Section):
    SECTION: ClassVar[str] = "evaluation"
    tasks: list[str] | None = Field(default=None, description="task names to score (default: all tasks of the pool)")
    task_files: dict[str, ZooPath] = Field(default_factory=dict, description="user tasks: name -> a task folder (one file per split) or a .parquet, .jsonl or .json file (validation); `zoo:<profile>/tasks/<task>` names a built-in zoo's")
    task_weights: dict[str, float] | None = None
    metric: Literal["token_accuracy", "exact_match", "token_f1", "rouge_l", "bleu", "neg_cross_entropy"] = "token_accuracy"
    max_samples: int = Field(default=200, gt=0)
    batch_size: int = Field(default=64, gt=0)
    rows_per_pass: int | None = Field(
        default=None, gt=0,
        description="rows per forward pass; above batch_size, several candidates share a pass "
                    "(default: batch_size on CPU, 4096 on GPU)")


SearchSpaceName = Literal["ab", "delta"]
SPACE_HELP = ("LoRA pools: 'ab' searches over the A and B factors (what GENOME and Model Swarms do; "
              "mixing factors of different experts adds cross terms); 'delta' over the dense product "
              "deltas B@A (exact weighted sums; memory of full task vectors; the result is a task vector)")


SearchName = Literal["genome", "swarm"]  # the one list of search algorithms (evomerge.search.SEARCHES)
# evomerge's own defaults (docs/search.md): start searches also from the task-arithmetic points
# of the registry's lambda grid and from the registry's TIES merges, and return a candidate the
# search found only when it beats the best starting point by more than SELECT_MARGIN (validation)
DEFAULT_INIT_SUMS = (0.3, 0.5, 0.7, 1.0, 1.3, 1.6, 2.0)
DEFAULT_INIT_MERGES = ("ties", "dare_ties")
DEFAULT_SELECT_MARGIN = 0.005
INIT_MERGES_HELP = "extra initial individuals: these registry merges of all experts at the registry's defaults"
SELECT_MARGIN_HELP = ("the returned individual is the best initial one unless a later one beats it by more than "
                      "this (validation fitness); 0: the best scored")


def key_error(key: str | tuple[str, ...], message: str):
    """A :class:`ConfigError` of one key's value (dotted, e.g. ``swarm.init_merges``), or of a few
    keys read together (a method's parameters and the method): the CLI blames where those keys
    were set, not everything that set a key of their section (:mod:`evomerge.config.sources`)."""
    return key_errors([(key, message)])


def key_errors(problems: list[tuple[str | tuple[str, ...], str]]):
    """One :class:`ConfigError` of several problems, each (its keys, its message) on its own
    line(s), each line blamed on where its own keys were set."""
    from evomerge.errors import ConfigError

    err = ConfigError("\n".join(message for _, message in problems))
    err.keys_by_line = list(problems)
    if len(problems) == 1:
        err.key = problems[0][0]
    return err


def _registry_operators() -> list[str]:
    """Merge-registry methods a search can apply to individuals: no data, one tensor out."""
    from evomerge.merging.registry import available_methods, get_merge_method

    return [m for m in available_methods() if not get_merge_method(m).needs and not get_merge_method(m).per_task]


def check_init_merges(section: str, names: list[str]) -> None:
    """Each starting merge is a registry method: ``linear`` and ``blx`` are the searches' own
    operators on two parents, not merges of every expert (a sum of the experts is ``init_sums``)."""
    ok = _registry_operators()
    for name in names:
        if name not in ok:
            why = (" (linear/blx are not registry merges: a sum of the experts is `init_sums`)"
                   if name in ("linear", "blx") else "")
            raise key_error(f"{section}.init_merges", f"`{section}.init_merges` must list merge-registry methods "
                            f"{ok}{why}. Got {name!r} instead.")


def check_search_operator(section: str, key: str, name: str) -> None:
    """A search merge operator: ``linear``, ``blx`` (crossover only) or a merge-registry method
    that needs no data and returns one tensor (ties, dare_ties, magnitude_ties, ...)."""
    if name in ("linear", "blx"):
        return
    ok = _registry_operators()
    if name not in ok:
        raise key_error(f"{section}.{key}", f"`{section}.{key}` must be linear, blx or one of the merge registry's {ok}. "
                        f"Got {name!r} instead.")


class GenomeConfig(Section):
    SECTION: ClassVar[str] = "genome"
    preset: Literal["paper"] | None = Field(
        default=None, description="'paper': the settings of the paper's runs; explicit keys may not contradict it")
    population: int = Field(default=10, ge=2)
    max_population: int | None = Field(default=None, ge=2, description="GENOME+ (succession): grow to this, then select back to it")
    generations: int = Field(default=10, ge=1)
    cross_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    ind_mut_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    gene_mut_rate: float = Field(default=0.1, ge=0.0, le=1.0)
    sigma: float = Field(default=0.001, ge=0.0)
    mutation: Literal["auto", "gauss", "coeff"] = Field(
        default="auto", description="gauss: N(0, sigma^2) on gene_mut_rate of the coordinates (the papers); coeff: "
                                    "add sum_i eps_i * expert_i, eps_i ~ N(0, coeff_sigma^2) (a per-expert coefficient "
                                    "gene); auto: coeff in delta space, gauss in ab space")
    coeff_sigma: float = Field(default=0.1, gt=0.0, description="std of the per-expert coefficient mutation")
    elite_percent: float = Field(default=0.1, ge=0.0, le=1.0)
    init_pairs: Literal["coverage", "coverage_reuse"] = Field(
        default="coverage_reuse",
        description="initial pairs: every expert appears, no pair twice ('coverage': the research code; the "
                    "population must fit the pairs), or pairs reused with new weights once all are used")
    init_merge: str | None = Field(default=None, description="operator of the initial pairs (default: the crossover's; linear for blx)")
    crossover: str = Field(default="linear", description="linear, blx, or a merge-registry method (ties, dare_ties, ...)")
    init_sums: list[float] = Field(
        default_factory=lambda: list(DEFAULT_INIT_SUMS),
        description="extra initial individuals lambda * (sum of the experts), one per lambda")
    init_merges: list[str] = Field(default_factory=lambda: list(DEFAULT_INIT_MERGES), description=INIT_MERGES_HELP)
    select_margin: float = Field(default=DEFAULT_SELECT_MARGIN, ge=0.0, description=SELECT_MARGIN_HELP)
    blx_alpha: float = Field(default=1.2, ge=0.0)
    density: float = Field(default=0.7, gt=0.0, le=1.0)
    early_stop: bool = True
    early_stop_iter: int = Field(default=5, ge=1, description="stop after more than this many generations without a new best")
    succession: bool = False
    ensemble_k: int = Field(default=3, ge=1)
    space: SearchSpaceName = Field(default="delta", description=SPACE_HELP)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        from evomerge.config.presets import GENOME_PRESETS, apply_preset

        return apply_preset("genome", GENOME_PRESETS, data)

    @model_validator(mode="after")
    def _check_max_population(self) -> "GenomeConfig":
        check_search_operator("genome", "crossover", self.crossover)
        check_init_merges("genome", self.init_merges)
        if self.init_merge is not None:
            if self.init_merge == "blx":
                raise key_error("genome.init_merge", "`genome.init_merge` cannot be blx (it ignores the pair's weights); "
                                "use linear or a registry method")
            check_search_operator("genome", "init_merge", self.init_merge)
        if self.max_population is not None and self.max_population < self.population:
            raise key_error(("genome.max_population", "genome.population"),
                            f"genome: `max_population` must be >= `population` ({self.population}). "
                            f"Got {self.max_population} instead.")
        return self


class SwarmConfig(Section):
    SECTION: ClassVar[str] = "swarm"
    preset: Literal["paper"] | None = Field(
        default=None, description="'paper': Model Swarms' defaults; explicit keys may not contradict it")
    max_particles: int | None = Field(default=None, ge=2, description="pad the swarm to this many particles")
    max_iter: int = Field(default=200, ge=1)
    inertia: float = Field(default=0.4, ge=0.0)
    cognitive: float = Field(default=0.3, ge=0.0)
    social: float = Field(default=0.3, ge=0.0)
    repel: float = Field(default=0.3, ge=0.0)
    step: float = Field(default=1.0, gt=0.0)
    step_decay: float = Field(default=0.95, gt=0.0, le=1.0)
    min_step: float = Field(default=0.1, ge=0.0)
    patience: int = Field(default=10, ge=1)
    restart_patience: float = Field(default=0.5, gt=0.0)
    init_velocity: Literal["random", "zero", "best"] = "random"
    init_sums: list[float] = Field(
        default_factory=lambda: list(DEFAULT_INIT_SUMS),
        description="extra initial particles lambda * (sum of the experts), one per lambda")
    init_merges: list[str] = Field(default_factory=lambda: list(DEFAULT_INIT_MERGES), description=INIT_MERGES_HELP)
    select_margin: float = Field(default=DEFAULT_SELECT_MARGIN, ge=0.0, description=SELECT_MARGIN_HELP)
    space: SearchSpaceName = Field(default="delta", description=SPACE_HELP)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        from evomerge.config.presets import SWARM_PRESETS, apply_preset

        return apply_preset("swarm", SWARM_PRESETS, data)

    @model_validator(mode="after")
    def _check_init_merges(self) -> "SwarmConfig":
        check_init_merges("swarm", self.init_merges)
        return self


class RayConfig(Section):
    SECTION: ClassVar[str] = "ray"
    address: str | None = Field(default=None, description="None: start a local Ray; 'auto': join a cluster")
    num_actors: int | None = Field(default=None, ge=1, description="default: one per GPU, else one per CPU")
    gpus_per_actor: float | None = Field(
        default=None, ge=0.0, description="GPUs per actor (fractions share a GPU); default: 1 when the cluster has GPUs, else 0"
    )
    cpus_per_actor: float = Field(default=1.0, gt=0.0)
    placement_timeout_s: float = Field(default=120.0, gt=0.0, description="give up if the actors cannot be placed by then")
    islands: int = Field(default=1, ge=1)
    migration_interval: int = Field(default=3, ge=1)
    max_restarts: int = Field(default=3, ge=0)
    connect_timeout_s: float = Field(default=15.0, gt=0.0, description="give up joining `address` after this many seconds")


class ScaleConfig(Section):
    # The keys `evomerge report RUN --set` may change: how the report judges the cells already run
    # (the online rule's tolerance and window, the law's fit and its noise tolerance; read by
    # pipelines/scale/rules.py and law_noise.py). Every other key describes the cells themselves
    # (methods, seeds, the k grid, RHT, searches, order, merge parameters, the stop that cut the
    # searches: the plan and search_stop.json recorded what it did), so the report refuses it.
    REPORT_KEYS: ClassVar[frozenset[str]] = frozenset({"online_tol", "online_window", "law_first_k", "law_noise_z"})
    SECTION: ClassVar[str] = "scale"
    ACCEPTS: ClassVar[dict[str, str]] = {"delta": "a positive finite number, 'relative' or 'adaptive'"}

    methods: list[str] = Field(default_factory=lambda: ["task_arithmetic", "ties", "dare_ties", "emr"])
    search: list[SearchName] = Field(default_factory=list)
    with_rht: bool = True
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    order: Literal["given", "random", "low_correlation", "gain"] = Field(
        default="low_correlation", description="expert order: given, random, low_correlation (|rho|), gain (own-task gain, best first; `evomerge scale`'s built-in config uses it: best curve on the shipped zoo, docs/scale.md)")
    k_min: int = Field(default=1, ge=1)
    k_max: int | None = Field(default=None, ge=1)
    delta: float | Literal["adaptive", "relative"] = Field(
        default="relative", description="Theorem 1's Delta: a number (fixed), 'relative' (delta_fraction of the first drop) or 'adaptive'")
    delta_fraction: float = Field(default=0.1, description="with delta: relative, Delta = this fraction (in (0, 1)) of the first drop; another value with another delta is refused")
    stop: bool = True
    stop_rule: Literal["online", "theorem1"] = Field(
        default="online", description="the rule that stops the searches' k grid (registry merges always run to the pool size)")
    stop_target: Literal["all", "own"] = Field(
        default="all", description="the curve the online rule reads for the searches: all (each search's best on every task of the run, the report's `all` curve) or own (the search's objective: its k experts' tasks, which shrinks with k)")
    online_tol: float = Field(default=0.02, gt=0.0, description="online rule: gain per expert below this fraction of the first expert's gain counts as none (0.02: chosen on synthetic curves, benchmarks/online_rule_synthetic.py)")
    online_window: int = Field(default=1, ge=1, description="online rule: measured gain over this many last grid steps")
    law_first_k: int = Field(default=4, ge=3, description="the scaling law predicted from k <= this only")
    law_noise_z: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="the law on k <= law_first_k: its tolerance is at least this many standard errors of a paired one-step difference on k <= law_first_k (the run's per-example scores, validation); 0: off, the tolerance online_tol x the first gain alone (docs/scale.md)")
    stats_samples: int = Field(default=64, ge=1, description="Fisher / RegMean: train examples per expert for its statistics")
    pairs: bool = Field(default=True, description="run the correlated-pair experiment (needs a pool with domains, e.g. a zoo)")
    population_test: bool = Field(default=False, description="score every individual of a search's final population on test (the paper's test-set selection, reported flagged)")
    search_k: list[int] | None = Field(default=None, description="k values where search methods run (default: every k from 2 to the pool size, cut by the stop rule)")
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="merge method -> its parameters")
    hist_samples: int = Field(default=4096, ge=0, description="merged-weight entries kept per cell for histograms")

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, v: list[str]) -> list[str]:
        from evomerge.errors import ConfigError
        from evomerge.merging.registry import get_merge_method

        if not v:
            raise ValueError("must list at least one merge-registry method: the report compares every curve with "
                             "the best registry merge (its reference)")
        _check_distinct(v, "method")
        for name in v:
            try:
                get_merge_method(name)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return v

    @field_validator("search")
    @classmethod
    def _check_search(cls, v: list[str]) -> list[str]:
        _check_distinct(v, "search")
        return v

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, v: list[int]) -> list[int]:
        rule = "must be a non-empty list of distinct non-negative integers"
        if not v:
            raise ValueError(f"{rule} (every cell runs once per seed)")
        negative = [s for s in v if s < 0]
        if negative:
            raise ValueError(f"{rule} ({negative[0]} is negative)")
        _check_distinct(v, "seed", rule)
        return v

    @field_validator("delta")
    @classmethod
    def _check_delta(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not v > 0:
            raise PydanticCustomError("config_value", f"Input should be {cls.ACCEPTS['delta']}")
        return v

    @field_validator("delta_fraction")
    @classmethod
    def _check_delta_fraction(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("must be in (0, 1)")
        return v

    @field_validator("search_k")
    @classmethod
    def _check_search_k(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(k < 2 for k in v):
            raise ValueError("a search merges at least 2 experts: every k must be >= 2")
        return v

    @model_validator(mode="after")
    def _check_scale(self) -> "ScaleConfig":
        """The checks that read several keys together; every problem found is reported, one line each."""
        from evomerge.errors import ConfigError
        from evomerge.merging.registry import get_merge_method

        problems: list[tuple[tuple[str, ...], str]] = []
        if self.delta != "relative" and "delta_fraction" in self.model_fields_set \
                and self.delta_fraction != type(self).model_fields["delta_fraction"].default:
            problems.append((("scale.delta_fraction", "scale.delta"),
                             f"`scale.delta_fraction` ({self.delta_fraction!r}) applies only to `scale.delta: relative`, "
                             f"but `scale.delta` is {self.delta!r}; remove one of them"))
        if self.search and self.search_k == []:
            problems.append((("scale.search_k", "scale.search"),
                             f"`scale.search_k` is empty, so the searches of `scale.search` {self.search} would run at "
                             "no k; list the k values, leave it out (every k from 2) or empty `scale.search`"))
        for name, params in self.method_params.items():
            keys = (f"scale.method_params.{name}", "scale.methods")
            if name not in self.methods:
                problems.append((keys, f"`scale.method_params.{name}`: `{name}` is not in `scale.methods` {self.methods}"))
                continue
            try:
                get_merge_method(name).resolve(params)
            except ConfigError as err:
                problems.append((keys[:1], f"`scale.method_params.{name}`: {err}"))
        if self.k_max is not None and self.k_max < self.k_min:
            problems.append((("scale.k_max", "scale.k_min"),
                             f"`scale.k_max` ({self.k_max}) must be >= `scale.k_min` ({self.k_min})"))
        if self.k_max is not None and self.law_first_k >= self.k_max:
            problems.append((("scale.law_first_k", "scale.k_max"),
                             f"`scale.law_first_k` ({self.law_first_k}) must be below `scale.k_max` ({self.k_max}): "
                             "the law fitted on k <= law_first_k predicts the k beyond it, and fitted on every k "
                             "the run measures it would predict nothing"))
        if problems:
            raise key_errors(problems)
        return self


def _check_distinct(values: list[Any], what: str, prefix: str = "must not list a value twice") -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{prefix} ({what} {v!r} is listed twice)")
        seen.add(v)


class SearchSpaceParam(Section):
    """One dimension of an Optuna search space."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None


class TuneConfig(Section):
    SECTION: ClassVar[str] = "tune"
    space: dict[str, SearchSpaceParam] = Field(
        default_factory=dict, description="dotted config names (merge.params.density, rht.gamma, experts.count) -> range"
    )
    objective: Literal["merge"] | SearchName = Field(
        default="merge", description="validation fitness of one merge, or of one evolutionary run per trial"
    )
    storage: str | None = Field(
        default=None, description="Optuna storage URL (${VAR} read from the environment); default sqlite in the run dir"
    )
    study_name: str = "evomerge"
    sampler: Literal["tpe", "cmaes", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = Field(default="median", description="per-generation, evolutionary trials")
    n_trials: int = Field(default=20, ge=1, description="finished trials the study should hold in all (shared by workers)")
    timeout: float | None = Field(default=None, gt=0, description="seconds after which a worker starts no new trial")
