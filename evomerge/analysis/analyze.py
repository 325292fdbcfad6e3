"""``analyze_pool``: how many experts are worth merging, and why, written as tables and figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from evomerge.analysis import figures
from evomerge.analysis.collect import PoolStats, RhtFn, collect
from evomerge.analysis.source import pool_view
from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule
from evomerge.io import atomic_dir, jsonable, write_json_atomic, write_parquet_atomic
from evomerge.theory.geometry import n_components_for, pca_at_ceiling, pca_cumulative_variance, random_subspace_mean_angle
from evomerge.theory.tails import hill_tail_index, kurtosis_from_moments
from evomerge.theory.variance import adaptive_delta, n_max, sigma_rho_from_gram, stop_index, variance_curve

PCA_THRESHOLD = 0.95


@dataclass
class AnalysisResult:
    """The summary (also ``summary.json``), the tables (also ``<name>.parquet``) and figures."""

    out_dir: Path
    summary: dict[str, Any]
    tables: dict[str, pa.Table] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    @property
    def sigma2(self) -> float:
        return self.summary["sigma2"]

    @property
    def rho(self) -> float:
        return self.summary["rho"]

    @property
    def n_max(self) -> int:
        return self.summary["n_max"]


RHT_COMPARED = ("compared: the uniform merge's tails without and with RHT (rht_config's constants; "
                "its enabled flag is the merges' setting, not this comparison's)")


def _rht_fn(rht_cfg: Any) -> tuple[RhtFn | None, str]:
    """The RHT applied to the uniform merge (seeded by ``rht_cfg.seed`` as ``evomerge merge``
    does), or None; and what the summary's ``rht`` says was done."""
    try:
        from evomerge.merging.rht import apply_rht
    except ImportError as err:
        return None, f"not compared: evomerge.merging.rht not importable ({err})"

    def fn(key: str, merged: torch.Tensor) -> torch.Tensor:
        return apply_rht({key: merged}, rht_cfg, rht_cfg.seed)[key]

    return fn, RHT_COMPARED


def _tail_stats(stats: PoolStats, row: int, k_frac: float) -> dict[str, float]:
    s = stats.sums
    cnt = s.count
    mean = s.s[0, row] / cnt
    var = max(s.s[1, row] / cnt - mean * mean, 0.0)
    l2 = math.sqrt(s.s[1, row])
    hoyer = (math.sqrt(cnt) - s.abs1[row] / l2) / (math.sqrt(cnt) - 1) if l2 > 0 and cnt > 1 else float("nan")
    return {
        "mean": mean,
        "variance": var,
        "std": math.sqrt(var),
        "norm": l2,
        "max_abs": float(s.maxabs[row]),
        "frac_zero": float(s.zeros[row]) / cnt,
        "hoyer_sparsity": hoyer,
        "kurtosis": kurtosis_from_moments(cnt, *s.s[:, row]),
        "tail_index": hill_tail_index(stats.sample.values[row], k_frac=k_frac),
    }


def _spectrum_means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean over an expert's 2-D tensors of the singular-value summaries (NaN if none)."""
    out = {}
    for col in ("stable_rank", "effective_rank", "top1_energy"):
        vals = [r[col] for r in rows if math.isfinite(r[col])]
        out[f"sv_{col}"] = float(np.mean(vals)) if vals else float("nan")
    return out


def _mean_angle_matrix(rows: list[dict[str, Any]], n: int) -> np.ndarray:
    tot, cnt = np.zeros((n, n)), np.zeros((n, n))
    for r in rows:
        i, j = r["expert_i"], r["expert_j"]
        for a, b in ((i, j), (j, i)):
            tot[a, b] += r["mean_angle"]
            cnt[a, b] += 1
    with np.errstate(invalid="ignore"):
        m = tot / cnt
    np.fill_diagonal(m, 0.0 if rows else np.nan)
    return m


def _pool_mean_angle(rows: list[dict[str, Any]], n: int) -> float:
    """The summary's mean principal angle: per pair the mean over its weights, then over pairs."""
    if not rows:
        return float("nan")
    return float(np.nanmean(_mean_angle_matrix(rows, n)[np.triu_indices(n, 1)]))


def _random_angle_level(rows: list[dict[str, Any]], n: int, seed: int) -> float:
    """What :func:`_pool_mean_angle` would be for independent uniformly random subspaces of the
    compared shapes (each row's ambient dimension and two ranks): the level of "unrelated"."""
    levels: dict[tuple[int, int, int], float] = {}
    random_rows = []
    for r in rows:
        shape = (r["dim"], *sorted((r["rank_i"], r["rank_j"])))
        if shape not in levels:
            levels[shape] = random_subspace_mean_angle(*shape, seed=seed)[0]
        random_rows.append({**r, "mean_angle": levels[shape]})
    return _pool_mean_angle(random_rows, n)


def _check_delta(delta: float | str | None, fraction: float) -> None:
    """Fail before the pass over the pool, not after it."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"delta_fraction must be in (0, 1), got {fraction!r}")
    if delta is None or delta in ("adaptive", "relative"):
        return
    if isinstance(delta, str) or not (math.isfinite(float(delta)) and float(delta) > 0):
        raise ConfigError(f"delta must be a number > 0, 'relative' or 'adaptive', got {delta!r}")


def _resolve_delta(delta: float | str | None, sigma2: float, rho: float, n: int, fraction: float) -> tuple[float, str]:
    """The threshold and how it was chosen. A pool-derived Delta is 0 when no expert lowers the
    variance (rho = 1, e.g. identical experts, or sigma2 = 0): n_max is then 1, and the mode says why."""
    if delta is None or delta == "adaptive":
        value, mode = adaptive_delta(sigma2, rho, n, mode="mean"), "adaptive (mean drop over the pool)"
    elif delta == "relative":  # a fraction of the first drop, sigma2 (1 - rho) / 2
        value, mode = fraction * sigma2 * (1.0 - rho) / 2.0, f"relative ({fraction:g} of the first drop)"
    else:
        return float(delta), "given"
    if value <= 0:
        why = f"rho = {rho:g}: the experts' task vectors are perfectly correlated (identical?)" if sigma2 > 0 else "sigma^2 = 0"
        mode = mode[:-1] + f"; 0 because {why}, so no expert after the first lowers the variance: n_max = 1)"
    return value, mode


def analyze_pool(
    pool_or_task_vectors: Any,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    delta: float | str | None = None,
    delta_fraction: float = 0.1,
    rht_cfg: Any = None,
    lora_modules: Sequence[Mapping[str, LoraModule]] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    sample_size: int = 200_000,
    angle_rank: int = 8,
    tail_k_frac: float = 0.01,
    progress: bool = True,
) -> AnalysisResult:
    """Analyse an expert pool and write tables, figures and ``summary.json`` to ``out_dir``.

    ``pool_or_task_vectors``: an ``ExpertPool`` (or any object with ``names``, ``keys()``,
    ``stacked(key)``, optionally ``kind == "lora"`` and ``lora(i)``), a list of task-vector
    dicts, or a ``Tensor[n, d]``. ``delta``: the stop threshold (a number, None/"adaptive"
    for :func:`~evomerge.theory.adaptive_delta`, or "relative": ``delta_fraction`` of the
    first drop; equicorrelated form). ``rht_cfg``: an ``RHTConfig`` for the
    with/without-RHT comparison (default constants when None; its ``enabled`` flag is ignored:
    both are always shown). ``seed`` drives the coordinate sample and the randomized SVD.
    One streaming pass over the tensors; the directory appears atomically.
    """
    _check_delta(delta, delta_fraction)
    if sample_size < 100:
        raise ConfigError(f"sample_size must be >= 100, got {sample_size}")
    if angle_rank < 1:
        raise ConfigError(f"angle_rank must be >= 1, got {angle_rank}")
    view = pool_view(pool_or_task_vectors, names, lora_modules)
    if rht_cfg is None:
        from evomerge.config import RHTConfig

        rht_cfg = RHTConfig()
    rht, rht_status = _rht_fn(rht_cfg)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        stats = collect(view, rht=rht, seed=seed, sample_size=sample_size, angle_rank=angle_rank, progress=progress)
        result = _write_outputs(tmp, view, stats, (delta, delta_fraction), rht_status, rht_cfg, seed, tail_k_frac)
    result.out_dir = Path(out_dir)
    result.figures = [Path(out_dir) / p.name for p in result.figures]
    return result


def _write_outputs(tmp: Path, view, stats: PoolStats, delta, rht_status: str, rht_cfg, seed: int, k_frac: float) -> AnalysisResult:
    n, names = view.n, view.names
    sigma2, rho, corr = sigma_rho_from_gram(stats.gram)
    cos = stats.gram.cosine()
    delta_v, delta_mode = _resolve_delta(delta[0], sigma2, rho, n, delta[1])
    nmax = n_max(sigma2, rho, delta_v)
    stop_k = stop_index(sigma2, rho, delta_v, n)
    cum = pca_cumulative_variance(stats.gram)
    n95 = n_components_for(cum, PCA_THRESHOLD)
    angles = _mean_angle_matrix(stats.angle_rows, n)
    iu = np.triu_indices(n, 1)
    mean_angle = _pool_mean_angle(stats.angle_rows, n)
    random_angle = _random_angle_level(stats.angle_rows, n, seed)

    tables: dict[str, pa.Table] = {}
    tables["experts"] = pa.Table.from_pylist([
        {"expert": i, "name": names[i], **_tail_stats(stats, i, k_frac), **_spectrum_means(stats.spectra[i])} for i in range(n)
    ])
    tables["pairwise"] = pa.Table.from_pylist([
        {"expert_i": int(i), "expert_j": int(j), "name_i": names[i], "name_j": names[j], "correlation": float(corr[i, j]),
         "cosine": float(cos[i, j]), "mean_principal_angle": float(angles[i, j])}
        for i, j in zip(*iu)
    ])
    ratio = np.diff(np.concatenate([[0.0], cum]))
    tables["pca"] = pa.Table.from_pylist([
        {"component": c + 1, "explained_ratio": float(ratio[c]), "cumulative": float(cum[c])} for c in range(cum.size)
    ])
    angle_schema = pa.schema([("key", pa.string()), ("layer", pa.int64()), ("expert_i", pa.int64()), ("expert_j", pa.int64()),
                              ("name_i", pa.string()), ("name_j", pa.string()), ("dim", pa.int64()), ("rank_i", pa.int64()),
                              ("rank_j", pa.int64()), ("n_angles", pa.int64()),
                              ("mean_angle", pa.float64()), ("min_angle", pa.float64()), ("max_angle", pa.float64())])
    tables["layer_angles"] = pa.Table.from_pylist(stats.angle_rows, schema=angle_schema)
    curve = variance_curve(sigma2, rho, n, delta_v)
    tables["variance_floor"] = pa.Table.from_pylist([{**r, "delta": delta_v, "n_max": nmax} for r in curve])
    merged_rows = [{"variant": "uniform_merge", **_tail_stats(stats, n, k_frac)}]
    if stats.has_rht:
        merged_rows.append({"variant": "uniform_merge_rht", **_tail_stats(stats, n + 1, k_frac)})
    tables["merged_tails"] = pa.Table.from_pylist(merged_rows)
    for name, table in tables.items():
        write_parquet_atomic(tmp / f"{name}.parquet", table)

    corr_lim = figures.symmetric_limit(corr)
    figs = [
        figures.plot_pca_cumulative(cum, tmp / "pca_cumulative.png", PCA_THRESHOLD),
        figures.plot_heatmap(corr, names, tmp / "correlation.png", title="Pearson correlation of task vectors",
                             label="correlation", fmt=".2f", vmin=-corr_lim, vmax=corr_lim, cmap="coolwarm"),
        figures.plot_variance_floor(curve, tmp / "variance_floor.png", n_stop=stop_k, delta=delta_v, floor=sigma2 * max(rho, 0.0)),
    ]
    if stats.angle_rows:
        figs.append(figures.plot_heatmap(angles, names, tmp / "principal_angles.png", vmin=0, vmax=90, fmt=".0f",
                                         title=f"mean principal angle (degrees)\nrandom subspaces of these shapes: "
                                               f"{random_angle:.1f} (dashed on the scale)",
                                         label="degrees", marks=[random_angle]))
    hist = {"uniform merge": stats.sample.values[n].numpy()}
    if stats.has_rht:
        hist["uniform merge + RHT"] = stats.sample.values[n + 1].numpy()
    figs.append(figures.plot_weight_histograms(hist, tmp / "merged_weight_hist.png"))

    summary = {
        "n_experts": n,
        "names": names,
        "kind": view.kind,
        "n_tensors": len(view.keys),
        "n_params": int(stats.gram.count),
        "sigma2": sigma2,
        "rho": rho,
        "variance_floor": sigma2 * max(rho, 0.0),  # rho < 0 cannot hold for an unbounded pool
        "delta": delta_v,
        "delta_mode": delta_mode,
        "n_max": nmax,
        "stop_k": stop_k,
        "pca_threshold": PCA_THRESHOLD,
        "pca_components": n95,
        "pca_at_ceiling": pca_at_ceiling(n95, n),
        "mean_principal_angle": None if math.isnan(mean_angle) else mean_angle,
        "principal_angle_random_deg": None if math.isnan(random_angle) else random_angle,
        "mean_abs_cosine": float(np.abs(cos[iu]).mean()),
        "rht": rht_status,
        "rht_config": rht_cfg.model_dump(mode="json") if hasattr(rht_cfg, "model_dump") else rht_cfg,
        "merged_kurtosis": merged_rows[0]["kurtosis"],
        "merged_kurtosis_rht": merged_rows[1]["kurtosis"] if stats.has_rht else None,
        "seed": seed,
        "tables": sorted(f"{k}.parquet" for k in tables),
        "figures": sorted(p.name for p in figs),
    }
    write_json_atomic(tmp / "summary.json", jsonable(summary))
    return AnalysisResult(out_dir=tmp, summary=summary, tables=tables, figures=figs)


