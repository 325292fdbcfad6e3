"""Apply a registered merge method to whole experts.

* :func:`merge_task_vectors` streams ``(key, Tensor[n, *shape])`` pairs (one tensor at a time,
  as an expert pool yields them) and merges each with a generator seeded from ``(seed, key)``,
  so results do not depend on the order of keys or on which process merges which key.
* :func:`merge_lora` merges LoRA experts in one of three spaces:
  ``delta`` (the products ``scale * B @ A``; optional SVD back to rank ``rank``),
  ``ab`` (the method applied to A and to B separately; needs equal ranks; not the weighted
  sum of the deltas, cross terms appear), ``concat`` (exact low-rank form of a *linear*
  method: ``B = [c_1 s_1 B_1 ... c_n s_n B_n]``, ``A = [A_1; ...; A_n]``).
* :func:`merge_tensordicts`: the crossover helper used by the searches.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from evomerge.errors import ConfigError
from evomerge.experts.types import LoraModule, TensorDict
from evomerge.merging.registry import MergeMethod, get_merge_method
from evomerge.merging.types import PerTaskMerge, key_generator

Stats = Mapping[str, Mapping[str, torch.Tensor]]


def _method(method: str | MergeMethod) -> MergeMethod:
    return method if isinstance(method, MergeMethod) else get_merge_method(method)


def _weights(weights: Sequence[float] | torch.Tensor | None, n: int, name: str) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != n:
        raise ConfigError(f"merge method `{name}`: `weights` must have one entry per expert ({n}). Got {w.numel()} instead.")
    return w


def merge_one(
    method: str | MergeMethod,
    key: str,
    stacked: torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    stats: Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor | PerTaskMerge:
    """Merge one stacked tensor ``[n, *shape]`` stored under ``key`` (result on ``device``).

    Non-floating tensors (integer buffers) are returned from the first expert unchanged.
    """
    m = _method(method)
    dev = torch.device(device)
    x = stacked.to(dev)
    if not x.is_floating_point():
        return x[0].clone()
    w = _weights(weights, x.shape[0], m.name)
    resolved = m.resolve(params)
    st = None if stats is None else {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in stats.items()}
    gen = key_generator(seed, key, dev) if m.random else None
    try:
        return m.call(x, None if w is None else w.to(dev), gen, st, resolved)
    except ConfigError as e:
        raise ConfigError(f"tensor `{key}`: {e}") from None


def merge_task_vectors(
    method: str | MergeMethod,
    stream: Iterable[tuple[str, torch.Tensor]],
    weights: Sequence[float] | torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    stats: Stats | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    total: int | None = None,
) -> dict[str, Any]:
    """Merge a stream of stacked task vectors; returns ``{key: merged delta}`` (``PerTaskMerge``
    values for per-task methods such as ``emr``), each on ``device``.

    ``total``: the number of tensors, for the progress bar (default: ``len(stream)`` when the
    stream has one, as :meth:`ExpertPool.iter_stacked` has).

    ``stats`` maps a key to that tensor's statistics (``{"fisher": [n,*shape]}``,
    ``{"gram": [n,in,in]}``); a method that needs statistics raises :class:`ConfigError`
    without them.
    """
    m = _method(method)
    m.resolve(params)  # fail before reading any tensor
    if str(device).startswith("cuda"):  # (other devices, e.g. `meta` for shapes only, as torch takes them)
        from evomerge.devices import resolve_device

        resolve_device(device, "merge_task_vectors: `device`")
    if m.needs and stats is None:
        raise ConfigError(
            f"merge method `{m.name}` needs {', '.join(sorted(m.needs))} statistics computed on data; "
            "give data files (merge.data) or pick a data-free method."
        )
    items: Iterable[tuple[str, torch.Tensor]] = stream
    if progress:
        from tqdm.auto import tqdm

        if total is None and hasattr(stream, "__len__"):
            total = len(stream)  # type: ignore[arg-type]
        items = tqdm(stream, desc=f"merge ({m.name})", unit="tensor", total=total)
    out: dict[str, Any] = {}
    for key, stacked in items:
        out[key] = merge_one(m, key, stacked, weights, params, seed, None if stats is None else stats.get(key), device)
    if m.finalize is not None:
        out = m.finalize(out, m.resolve(params))
    return out


def merge_tensordicts(
    method: str | MergeMethod,
    dicts: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TensorDict:
    """Merge ``n`` TensorDicts with identical keys (search crossover). Per-task methods give
    their single-model delta (:meth:`PerTaskMerge.merged`)."""
    if not dicts:
        raise ConfigError("merge_tensordicts: need at least one TensorDict to merge.")
    keys = list(dicts[0].keys())
    for i, d in enumerate(dicts[1:], start=1):
        if set(d.keys()) != set(keys):
            diff = sorted(set(keys) ^ set(d.keys()))[:5]
            raise ConfigError(f"merge_tensordicts: TensorDict {i} has different keys from TensorDict 0 (e.g. {diff}).")
    device = next(iter(dicts[0].values())).device if keys else torch.device("cpu")
    stream = ((k, torch.stack([d[k].to(device) for d in dicts])) for k in keys)
    merged = merge_task_vectors(method, stream, weights, params, seed, device=device)
    return {k: (v.merged() if isinstance(v, PerTaskMerge) else v) for k, v in merged.items()}


def _check_fan(experts: Sequence[Mapping[str, LoraModule]], key: str) -> bool:
    fans = {e[key].fan_in_fan_out for e in experts if key in e}
    if len(fans) > 1:
        raise ConfigError(f"merge_lora: experts disagree on fan_in_fan_out for `{key}`.")
    return fans.pop()


def _all_keys(experts: Sequence[Mapping[str, LoraModule]]) -> list[str]:
    keys: list[str] = []
    seen: set[str] = set()
    for e in experts:
        for k in e:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def svd_to_lora(delta: torch.Tensor, rank: int, fan_in_fan_out: bool = False) -> LoraModule:
    """Best rank-``rank`` LoRA (Eckart-Young) of a delta in stored layout (scale 1)."""
    mat = (delta.T if fan_in_fan_out else delta).to(torch.float32)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return LoraModule(A=(root[:, None] * vh[:r]).contiguous(), B=(u[:, :r] * root).contiguous(), scale=1.0, fan_in_fan_out=fan_in_fan_out)


def linear_coefficients(method: str | MergeMethod, n: int, weights=None, params=None) -> torch.Tensor:
    """The ``c_i`` of a linear method (``merged = sum_i c_i tau_i``), found by merging unit vectors."""
    m = _method(method)
    if not m.linear or m.needs or m.random or m.per_task:
        linear = sorted(k for k, v in _all_linear().items())
        raise ConfigError(
            f"merge method `{m.name}` is not linear, so space `concat` cannot represent it exactly; "
            f"use a linear method ({', '.join(linear)}) or space `delta`."
        )
    eye = torch.eye(n, dtype=torch.float64)
    return merge_one(m, "__coefficients__", eye, weights, params)


def _all_linear() -> dict[str, MergeMethod]:
    from evomerge.merging.registry import all_methods

    return {k: v for k, v in all_methods().items() if v.linear and not v.needs and not v.random and not v.per_task}


def merge_lora(
    method: str | MergeMethod,
    experts: Sequence[Mapping[str, LoraModule]],
    weights: Sequence[float] | torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    space: str = "delta",
    seed: int = 0,
    rank: int | None = None,
    stats: Stats | None = None,
) -> TensorDict | dict[str, LoraModule] | dict[str, PerTaskMerge]:
    """Merge LoRA experts (``dict[str, LoraModule]`` each, keyed by adapted base weight).

    Returns a TensorDict of merged deltas (``space="delta"``; with ``rank`` a
    ``dict[str, LoraModule]`` by truncated SVD), or ``dict[str, LoraModule]`` (``ab``,
    ``concat``; scale 1). A module missing from some experts counts as a zero delta there.
    """
    m = _method(method)
    n = len(experts)
    if n == 0:
        raise ConfigError("merge_lora: need at least one expert.")
    keys = _all_keys(experts)
    if space == "delta":
        def stream():
            for k in keys:
                _check_fan(experts, k)  # the experts must agree on the layout
                ref = next(e[k] for e in experts if k in e)
                shape = ref.delta(torch.float32).shape
                yield k, torch.stack([e[k].delta(torch.float32) if k in e else torch.zeros(shape) for e in experts])

        merged = merge_task_vectors(m, stream(), weights, params, seed, stats=stats, total=len(keys))
        if rank is None:
            return merged
        if m.per_task:
            raise ConfigError(f"merge method `{m.name}` keeps per-task state; `rank` cannot compress it.")
        return {k: svd_to_lora(v, rank, _check_fan(experts, k)) for k, v in merged.items()}
    if space not in ("ab", "concat"):
        raise ConfigError(f"merge_lora: `space` must be one of ['delta', 'ab', 'concat']. Got {space!r} instead.")
    if rank is not None:
        raise ConfigError(f"merge_lora: `rank` ({rank}) compresses a merge of the deltas (space `delta`, truncated "
                          f"SVD); space `{space}` " + ("keeps the experts' rank." if space == "ab"
                                                       else "stacks every expert's factors (the sum of their ranks)."))
    if m.per_task or m.needs:
        raise ConfigError(f"merge method `{m.name}` works on full deltas only; use space `delta`.")
    if space == "concat":
        c = linear_coefficients(m, n, weights, params)
        out: dict[str, LoraModule] = {}
        for k in keys:
            fan = _check_fan(experts, k)
            present = [(i, e[k]) for i, e in enumerate(experts) if k in e]
            a_cat = torch.cat([mod.A.to(torch.float32) for _, mod in present], dim=0)
            b_cat = torch.cat([float(c[i]) * mod.scale * mod.B.to(torch.float32) for i, mod in present], dim=1)
            out[k] = LoraModule(A=a_cat, B=b_cat, scale=1.0, fan_in_fan_out=fan)
        return out
    # ab space
    out = {}
    for k in keys:
        fan = _check_fan(experts, k)
        mods = [e.get(k) for e in experts]
        ranks = {mod.rank for mod in mods if mod is not None}
        if len(ranks) > 1:
            raise ConfigError(
                f"merge_lora: space `ab` needs equal LoRA ranks, but `{k}` has ranks {sorted(ranks)}; "
                "use space `delta` or `concat`."
            )
        ref = next(mod for mod in mods if mod is not None)
        a = torch.stack([mod.A.to(torch.float32) if mod else torch.zeros_like(ref.A, dtype=torch.float32) for mod in mods])
        b = torch.stack(
            [mod.B.to(torch.float32) * mod.scale if mod else torch.zeros_like(ref.B, dtype=torch.float32) for mod in mods]
        )
        ma = merge_one(m, k + "::A", a, weights, params, seed)
        mb = merge_one(m, k + "::B", b, weights, params, seed)
        out[k] = LoraModule(A=ma, B=mb, scale=1.0, fan_in_fan_out=fan)
    return out
