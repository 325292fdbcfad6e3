"""A validated pool of experts of one base model, read per tensor.

``load_pool`` checks everything it can before any merge work starts (kinds, base model, shapes,
target modules, finite weights, readable files) and names the file at fault, in two passes: the
headers and configs (cheap), then every value (the NaN/inf scan and the search for identical
experts: a full read of every expert). ``load_pool(..., values=False)`` stops after the first, so
a caller can make its own cheap refusals before :meth:`ExpertPool.check_values` runs the second.
The pool then serves task vectors one tensor at a time (``stacked``), so full fine-tunes are
never all in memory at once.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.adapter_checks import (
    check_lora_bases,
    check_target_modules,
    delta_shape,
    known_base_name,
    same_lora,
)
from evomerge.experts.checkpoint_io import ARCH_FIELDS, CheckpointReader, check_finite_tensor, is_checkpoint_dir, read_config
from evomerge.experts.peft_io import PeftAdapter, check_adapter_finite, is_peft_dir, load_peft_adapter
from evomerge.experts.types import LoraModule, TensorDict

KINDS = ("lora", "full")
_WARNED: set[tuple[Any, str, str]] = set()


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class ExpertPool:
    """Experts of one base model. ``kind`` is ``"lora"`` or ``"full"``."""

    kind: str
    names: list[str]
    paths: list[Path]
    base_path: Path | None = None
    adapters: list[PeftAdapter] = field(default_factory=list)
    readers: list[CheckpointReader] = field(default_factory=list)
    base: CheckpointReader | None = None
    _keys: list[str] = field(default_factory=list)
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (i, j): experts with identical weights

    def __len__(self) -> int:
        return len(self.names)

    # --- structure -------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Base parameter names the experts change (LoRA: adapted weights; full: float tensors)."""
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def lora(self, i: int) -> dict[str, LoraModule]:
        self._need("lora", "lora()")
        return dict(self.adapters[i].modules)

    def adapter_config(self, i: int) -> dict[str, Any]:
        self._need("lora", "adapter_config()")
        return dict(self.adapters[i].config)

    def base_model_name(self) -> str | None:
        """The base the adapters name (the first that names one, as written; None: they name none),
        or ``--base`` of full fine-tunes."""
        if self.kind == "lora":
            names = (known_base_name(a.config.get("base_model_name_or_path")) for a in self.adapters)
            return next((n for n in names if n is not None), None)
        return str(self.base_path) if self.base_path else None

    def require_base(self, why: str) -> CheckpointReader:
        if self.base is None:
            raise ExpertLoadError(f"{why} needs the base model checkpoint; pass --base PATH (experts.base)")
        return self.base

    def base_tensor(self, key: str, dtype: torch.dtype | None = torch.float32, device="cpu") -> torch.Tensor:
        return self.require_base("reading base weights").get(key, dtype=dtype, device=device)

    # --- task vectors ----------------------------------------------------------------------
    def stacked(self, key: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """``Tensor[n, *shape]`` of the experts' task vectors for one base parameter."""
        if key not in self._shapes:
            raise KeyError(key)
        if self.kind == "lora":
            return torch.stack([_lora_delta(a.modules[key], device) for a in self.adapters]).to(dtype)
        base = self.base.get(key, dtype=torch.float32, device=device)
        out = torch.empty((len(self), *base.shape), dtype=dtype, device=device)
        for i, r in enumerate(self.readers):
            out[i] = r.get(key, dtype=torch.float32, device=device) - base
        return out

    def iter_stacked(
        self, keys: Sequence[str] | None = None, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> "StackedStream":
        """Stream ``(key, Tensor[n, *shape])`` over ``keys`` (default: all); ``len()`` gives the
        number of tensors (a progress bar's total)."""
        return StackedStream(self, list(self._keys if keys is None else keys), dtype, device)

    def task_vector(self, i: int, dtype: torch.dtype = torch.float32, device="cpu") -> TensorDict:
        """The whole task vector of expert ``i`` (only when a caller needs one expert at once)."""
        if self.kind == "lora":
            return {k: _lora_delta(m, device).to(dtype) for k, m in self.adapters[i].modules.items()}
        return {
            # not in place: a reader may hand out its cached tensor
            k: (self.readers[i].get(k, dtype=torch.float32, device=device) - self.base.get(k, torch.float32, device)).to(dtype)
            for k in self._keys
        }

    # --- statistics ------------------------------------------------------------------------
    def stats(self, zero_tol: float = 0.0) -> list[dict[str, Any]]:
        """Per expert: parameter counts, task-vector norm, max |value|, sparsity, LoRA ranks."""
        n = len(self)
        sq = [0.0] * n
        zeros = [0] * n
        total = 0
        maxabs = [0.0] * n
        for key, st in self.iter_stacked():
            flat = st.reshape(n, -1)
            total += flat.shape[1]
            for i in range(n):  # one row at a time keeps the temporaries small
                a = flat[i].abs()
                sq[i] += float(torch.linalg.vector_norm(a, dtype=torch.float64)) ** 2
                zeros[i] += int((a <= zero_tol).sum())
                maxabs[i] = max(maxabs[i], float(a.max()))
            del st, flat
        rows = []
        for i in range(n):
            row: dict[str, Any] = {
                "name": self.names[i],
                "path": str(self.paths[i]),
                "kind": self.kind,
                "tensors": len(self._keys),
                "delta_params": total,
                "norm": math.sqrt(sq[i]),
                "max_abs": maxabs[i],
                "sparsity": zeros[i] / total if total else 0.0,
            }
            if self.kind == "lora":
                mods = self.adapters[i].modules
                ranks = sorted({m.rank for m in mods.values()})
                row["ranks"] = ranks
                row["lora_params"] = sum(m.A.numel() + m.B.numel() for m in mods.values())
                row["rslora"] = bool(self.adapters[i].config.get("use_rslora", False))
                row["scales"] = sorted({round(m.scale, 6) for m in mods.values()})
            rows.append(row)
        return rows

    def summary(self, stats: list[dict[str, Any]] | None = None) -> str:
        """A printable table of :meth:`stats`."""
        stats = stats if stats is not None else self.stats()
        if self.base_path:
            of = f" of base {self.base_path}"
        elif self.base_model_name():
            of = f" of base {self.base_model_name()} (as the adapters name it; --base not given)"
        else:
            of = ", base not given (the adapters name none)"
        head = f"pool: {len(self)} {self.kind} expert(s){of}; {len(self._keys)} tensors"
        cols = ["name", "norm", "max|x|", "sparsity"] + (["ranks", "scale"] if self.kind == "lora" else [])
        first = max([20, *(len(r["name"]) for r in stats)])  # whole names: two long ones cut alike would read as one
        lines = [head, "  " + " ".join(f"{c:>12}" if j else f"{c:<{first}}" for j, c in enumerate(cols))]
        for r in stats:
            cells = [f"{r['name']:<{first}}", f"{r['norm']:>12.4g}", f"{r['max_abs']:>12.4g}", f"{r['sparsity']:>12.3f}"]
            if self.kind == "lora":
                cells += [f"{','.join(map(str, r['ranks'])):>12}", f"{','.join(f'{s:g}' for s in r['scales'])[:12]:>12}"]
            lines.append("  " + " ".join(cells))
        if self.kind == "full":  # a LoRA's norm follows its rank, alpha and training, not its base
            lines += [f"  warning: {w}" for w in norm_outliers(stats)]
        return "\n".join(lines)

    # --- the value pass ----------------------------------------------------------------------
    def check_values(
        self, check_finite: bool = True, progress: bool = False, warn: Callable[[str], None] | None = warn_stderr
    ) -> None:
        """Read every value once: a NaN/inf raises naming the file and tensor (``check_finite``), and
        experts with identical weights are listed in ``duplicates`` and reported through ``warn``
        (once per process and pair; None: silent). For full fine-tunes this reads every expert."""
        if self.kind == "lora":
            if check_finite:
                for ad in self.adapters:
                    check_adapter_finite(ad)
            n = len(self.adapters)
            self.duplicates = [(i, j) for i in range(n) for j in range(i + 1, n)
                               if same_lora(self.adapters[i], self.adapters[j])]
        else:
            self.duplicates = _scan_full(self.base, self.readers, self._keys, check_finite, progress)
        if warn is None:
            return
        for i, j in self.duplicates:
            said = (warn, str(self.paths[i].resolve()), str(self.paths[j].resolve()))
            if said in _WARNED:  # once per process (the scale run loads its pool several times)
                continue
            _WARNED.add(said)
            warn(
                f"experts `{self.names[i]}` ({self.paths[i]}) and `{self.names[j]}` ({self.paths[j]}) have identical "
                "weights (a copy under another name?): the pool counts one expert twice"
            )

    def _need(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise ExpertLoadError(f"{what} needs a {kind} pool; this pool holds {self.kind} experts")


#: a task-vector norm this many times above or below the pool's median is pointed out in the summary
NORM_OUTLIER_RATIO = 5.0


def norm_outliers(stats: list[dict[str, Any]], ratio: float = NORM_OUTLIER_RATIO) -> list[str]:
    """Warnings for full fine-tunes whose task-vector norm is more than ``ratio`` times above or
    below the others' (the pool's median; of two experts, the other one): a fine-tune of another
    base model with the same ``config.json`` passes every check of names and shapes, and its task
    vector (the difference of two unrelated models) shows only here. Merged all the same: a
    warning, not a refusal."""
    norms = [float(r["norm"]) for r in stats]
    why = "a fine-tune of another base model with the same config.json?"
    if len(norms) < 2:
        return []
    if len(norms) == 2:
        (a, b), (na, nb) = norms, (stats[0]["name"], stats[1]["name"])
        lo, hi = sorted(norms)
        if hi > ratio * lo:
            return [f"the task-vector norms of `{na}` ({a:.4g}) and `{nb}` ({b:.4g}) differ {_times(hi, lo)}: {why}"]
        return []
    med = statistics.median(norms)
    out = []
    for r, n in zip(stats, norms):
        if n > ratio * med or ratio * n < med:
            side = "above" if n > med else "below"
            out.append(f"`{r['name']}`: task-vector norm {n:.4g} is {_times(max(n, med), min(n, med))} {side} the "
                       f"pool's median {med:.4g}: {why}")
    return out


def _times(hi: float, lo: float) -> str:
    return f"{hi / lo:.1f}x" if lo > 0 else "infinitely"


class StackedStream:
    """:meth:`ExpertPool.iter_stacked`'s stream: an iterator of ``(key, Tensor[n, *shape])`` that
    reads one tensor at a time and knows its length."""

    def __init__(self, pool: ExpertPool, keys: list[str], dtype: torch.dtype, device) -> None:
        self._pool, self._keys, self._dtype, self._device = pool, keys, dtype, device
        self._it = iter(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> "StackedStream":
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        k = next(self._it)
        return k, self._pool.stacked(k, dtype=self._dtype, device=self._device)


# --- loading and validation ------------------------------------------------------------------


#: the file that marks an EMR merge output (``merge --method emr``, evomerge.pipelines.merge.job, writes it;
#: defined here, in the library, which imports nothing of the pipelines)
EMR_TASKS = "emr_tasks.json"


def detect_kind(path: Path) -> str:
    if not path.exists():
        raise ExpertLoadError(f"{path}: expert not found")
    if not path.is_dir():
        raise ExpertLoadError(f"{path}: an expert must be a folder (peft adapter or HF checkpoint)")
    if is_peft_dir(path):
        return "lora"
    if is_checkpoint_dir(path):
        return "full"
    if (path / EMR_TASKS).is_file():
        raise ExpertLoadError(
            f"{path}: an EMR merge output ({EMR_TASKS}: one unified vector and a mask per task), not an expert: "
            f"each task has its own task vector, evomerge.pipelines.merge.job.load_emr_task('{path}', TASK); "
            "score them in Python as Evaluator.evaluate(PerTask({task: load_emr_task(...), ...})) "
            "(docs/zoo.md#fitness-evaluation)"
        )
    raise ExpertLoadError(
        f"{path}: neither a peft adapter (adapter_config.json) nor a checkpoint (model.safetensors[.index.json])"
    )


def load_pool(
    paths: Sequence[str | Path],
    base: str | Path | None = None,
    allow_bin: bool = False,
    names: Sequence[str | None] | None = None,
    check_finite: bool = True,
    progress: bool = False,
    warn: Callable[[str], None] | None = warn_stderr,
    values: bool = True,
) -> ExpertPool:
    """Load and validate a pool of experts; raises :class:`ExpertLoadError` naming the culprit.

    Experts with identical weights under different names or folders (a copy of another expert)
    are kept, listed in ``pool.duplicates`` and reported through ``warn`` (``warning: ...`` on
    stderr by default; None: silent): merged, such a pair counts one expert twice.

    ``values=False``: only the checks of headers and configs (kinds, base model, shapes, target
    modules, readable files, then distinct names: two experts that cannot be merged are refused as
    such, not as a name clash that renaming would not mend); no value of a full fine-tune is read,
    NaN/inf is not looked for and ``duplicates`` stays empty until the caller runs
    :meth:`ExpertPool.check_values`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ExpertLoadError("empty pool: no experts given (pass --expert PATH or experts.experts in the config)")
    names = _names(paths, names)
    kinds = [detect_kind(p) for p in paths]
    if len(set(kinds)) > 1:
        lora = [str(p) for p, k in zip(paths, kinds) if k == "lora"]
        full = [str(p) for p, k in zip(paths, kinds) if k == "full"]
        raise ExpertLoadError(
            f"cannot mix LoRA adapters ({', '.join(lora)}) with full fine-tunes ({', '.join(full)}) in one pool"
        )
    base_path = Path(base) if base is not None else None
    base_reader = CheckpointReader(base_path, allow_bin=allow_bin) if base_path is not None else None
    if base_reader is not None:
        base_reader.check_readable()
    if kinds[0] == "lora":
        pool = _load_lora(paths, names, base_path, base_reader, allow_bin)
    else:
        pool = _load_full(paths, names, base_path, base_reader, allow_bin)
    _check_distinct(names)  # after the checks of shapes and bases: renaming experts that cannot merge would not help
    if values:
        pool.check_values(check_finite=check_finite, progress=progress, warn=warn)
    return pool


def _names(paths: list[Path], names: Sequence[str | None] | None) -> list[str]:
    if names is not None and len(names) != len(paths):
        raise ExpertLoadError(f"{len(names)} names given for {len(paths)} experts")
    seen_paths: dict[Path, Path] = {}
    for p in paths:
        rp = p.resolve()
        if rp in seen_paths:
            raise ExpertLoadError(f"{p}: the same expert is listed twice")
        seen_paths[rp] = p
    return [(n or p.name) for p, n in zip(paths, names or [None] * len(paths))]


#: the config form that names experts, as the refusals of two experts of one name give it
NAMED_EXPERTS_FORM = "`experts: {experts: [{path: DIR, name: NAME}, ...]}`"


def _check_distinct(names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExpertLoadError(
            f"duplicate expert name(s) {dup}: give each expert a distinct name (one given without a name, by "
            f"--expert or a config entry without `name`, is named by its folder); in a config, {NAMED_EXPERTS_FORM} "
            "(docs/merging.md, `evomerge merge`)"
        )


def read_adapters(
    paths: Sequence[str | Path], base: str | Path | None = None, allow_bin: bool = False, check_finite: bool = True,
    base_reader: CheckpointReader | None = None,
) -> list[PeftAdapter]:
    """LoRA adapters read and checked as :func:`load_pool` checks a LoRA pool's, each on its own
    (its config against its weights, NaN/inf with ``check_finite``) and all under one base rule
    (:func:`evomerge.experts.adapter_checks.check_lora_bases`: each against ``base`` first, then one
    base named by all), but not against each other's modules: what ``evaluate`` scores one by one."""
    adapters = [load_peft_adapter(p, allow_bin=allow_bin, check_finite=False) for p in paths]
    for ad in adapters:
        check_target_modules(ad)
    if base is not None and base_reader is None and adapters:
        base_reader = CheckpointReader(base, allow_bin=allow_bin)
        base_reader.check_readable()
    check_lora_bases(adapters, None if base is None else Path(base), base_reader)
    if check_finite:
        for ad in adapters:
            check_adapter_finite(ad)
    return adapters


def _listed(items: list[str]) -> str:
    """A few names of a list, with its length when some are left out."""
    if not items:
        return "none"
    return f"{items}" if len(items) <= 5 else f"{items[:3]} ... ({len(items)} in all)"


def _load_lora(paths, names, base_path, base_reader, allow_bin) -> ExpertPool:
    # each adapter against its own config, then against --base (so a refusal names the adapter at fault),
    # then against each other; the values (NaN/inf): check_values
    adapters = read_adapters(paths, base_path, allow_bin, check_finite=False, base_reader=base_reader)
    first = adapters[0]
    keys = sorted(first.modules)
    shapes = {k: delta_shape(m) for k, m in first.modules.items()}
    for ad in adapters[1:]:
        if set(ad.modules) != set(keys):
            extra = sorted(set(ad.modules) - set(keys))
            missing = sorted(set(keys) - set(ad.modules))
            raise ExpertLoadError(
                f"{ad.weights_file}: target modules differ from {first.weights_file} "
                f"(extra: {_listed(extra)}; missing: {_listed(missing)})"
            )
        for k, m in ad.modules.items():
            if delta_shape(m) != shapes[k]:
                raise ExpertLoadError(
                    f"{ad.weights_file}: `{k}` adapts a weight of shape {delta_shape(m)}, "
                    f"but {first.weights_file} adapts shape {shapes[k]}"
                )
            if m.fan_in_fan_out != first.modules[k].fan_in_fan_out:
                raise ExpertLoadError(f"{ad.path}: fan_in_fan_out differs from {first.path}")
    return ExpertPool(
        kind="lora", names=names, paths=paths, base_path=base_path, adapters=adapters,
        base=base_reader, _keys=keys, _shapes=shapes,
    )


def _lora_delta(m: LoraModule, device) -> torch.Tensor:
    """``scale * B @ A`` in fp32, computed on ``device`` (the factors are small to move)."""
    d = (m.B.to(device, torch.float32) @ m.A.to(device, torch.float32)) * m.scale
    return d.T if m.fan_in_fan_out else d


def _load_full(paths, names, base_path, base_reader, allow_bin) -> ExpertPool:
    if base_reader is None:
        raise ExpertLoadError(
            f"{paths[0]}: full fine-tuned experts need the base checkpoint to form task vectors; pass --base PATH"
        )
    base_cfg = read_config(base_path)
    readers = []
    for p in paths:
        cfg = read_config(p)
        for f in ARCH_FIELDS:
            if (f in cfg or f in base_cfg) and cfg.get(f) != base_cfg.get(f):
                raise ExpertLoadError(
                    f"{p / 'config.json'}: `{f}` is {cfg.get(f)!r} but the base {base_path / 'config.json'} has "
                    f"{base_cfg.get(f)!r} (a fine-tune of a different base model?)"
                )
        r = CheckpointReader(p, allow_bin=allow_bin)
        r.check_readable()
        readers.append(r)
    base_keys = set(base_reader.keys())
    keys = sorted(k for k in base_keys if base_reader.dtype(k).is_floating_point)
    shapes = {k: tuple(base_reader.shape(k)) for k in keys}
    for p, r in zip(paths, readers):
        rk = set(r.keys())
        if rk != base_keys:
            extra = sorted(rk - base_keys)[:3]
            missing = sorted(base_keys - rk)[:3]
            raise ExpertLoadError(
                f"{p}: tensor names differ from the base {base_path} (extra: {extra or 'none'}; missing: {missing or 'none'})"
            )
        for k in keys:
            if tuple(r.shape(k)) != shapes[k]:
                raise ExpertLoadError(f"{r.file_of(k)}: tensor `{k}` has shape {tuple(r.shape(k))}, base has {shapes[k]}")
    return ExpertPool(
        kind="full", names=names, paths=paths, base_path=base_path, readers=readers,
        base=base_reader, _keys=keys, _shapes=shapes,
    )


def _scan_full(base_reader, readers, keys, check_finite, progress) -> list[tuple[int, int]]:
    """The value pass over full fine-tunes: NaN/inf (``check_finite``) and the pairs of experts
    with identical weights, one tensor of every expert at a time."""
    # pairs that may hold identical weights (equal file sizes); each tensor read drops the pairs it tells apart
    sizes = [sum(f.stat().st_size for f in r.files()) for r in readers]
    dups = [(i, j) for i in range(len(readers)) for j in range(i + 1, len(readers)) if sizes[i] == sizes[j]]
    if check_finite or dups:
        from tqdm.auto import tqdm

        desc = "checking weights" if check_finite else "comparing experts"
        for k in tqdm(keys, desc=desc, unit="tensor", disable=not progress, leave=False):
            if not check_finite and not dups:
                break
            if check_finite:
                check_finite_tensor(base_reader.get(k), base_reader.file_of(k), k)
            got: dict[int, torch.Tensor] = {}
            for i, r in enumerate(readers):
                if check_finite or any(i in p for p in dups):
                    got[i] = r.get(k)
                    if check_finite:
                        check_finite_tensor(got[i], r.file_of(k), k)
            dups = [(i, j) for i, j in dups if got[i].dtype == got[j].dtype and torch.equal(got[i], got[j])]
    return dups
