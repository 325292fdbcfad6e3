"""Hugging Face checkpoint folders: lazy per-tensor reading and sharded, atomic writing.

Reading never loads a whole checkpoint: :class:`CheckpointReader` keeps one ``safe_open``
handle per shard and returns one tensor at a time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from evomerge.errors import ExpertLoadError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"
#: Files copied from the base folder next to a written checkpoint.
COPY_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
#: config.json fields that must agree between a base and its fine-tunes.
ARCH_FIELDS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim", "n_embd", "n_layer",
    "n_head", "d_model", "num_layers", "tie_word_embeddings",
)

DTYPE_SIZES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8}


def check_finite_tensor(t: torch.Tensor, file: Path, key: str) -> None:
    """A NaN/inf value in a stored tensor raises naming its file and key (adapters and checkpoints alike)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise ExpertLoadError(f"{file}: tensor `{key}` contains {bad} values")


def is_checkpoint_dir(path: Path) -> bool:
    path = Path(path)
    return any((path / f).is_file() for f in (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX))


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in ``path``; :class:`ExpertLoadError` (naming ``what``) if missing or malformed."""
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExpertLoadError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExpertLoadError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ExpertLoadError(f"{path}: expected a JSON object")
    return cfg


def read_config(folder: Path) -> dict:
    return read_json_object(Path(folder) / CONFIG, "config.json")


def _weight_map(folder: Path, allow_bin: bool) -> dict[str, Path]:
    """key -> file for a single-file or sharded checkpoint."""
    for single, index, is_bin in ((SAFE_SINGLE, SAFE_INDEX, False), (BIN_SINGLE, BIN_INDEX, True)):
        if not ((folder / single).is_file() or (folder / index).is_file()):
            continue
        if is_bin and not allow_bin:
            found = folder / (single if (folder / single).is_file() else index)
            raise ExpertLoadError(
                f"{found}: pickle .bin weights are refused by default; pass --allow-bin "
                "(loaded with torch.load(weights_only=True)) or convert to safetensors"
            )
        if (folder / index).is_file():
            ipath = folder / index
            try:
                wm = json.loads(ipath.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
                raise ExpertLoadError(f"{ipath}: not a valid checkpoint index ({err})") from None
            if not isinstance(wm, dict):
                raise ExpertLoadError(f"{ipath}: not a valid checkpoint index (`weight_map` is not a mapping)")
            out = {k: _shard_path(folder, ipath, v) for k, v in wm.items()}
            for f in sorted(set(out.values())):
                if not f.is_file():
                    raise ExpertLoadError(f"{f}: shard listed in {ipath.name} not found")
            return out
        return {"": folder / single}  # keys read from the file itself
    raise ExpertLoadError(f"{folder}: no {SAFE_SINGLE} or {SAFE_INDEX} found (not a checkpoint folder)")


def _shard_path(folder: Path, index: Path, entry: object) -> Path:
    """A shard file named by the index, confined to the checkpoint folder: an absolute path or a
    ``..`` that leaves it is refused (what is read must be what the manifest's folder hash covers)."""
    import posixpath

    if not isinstance(entry, str) or not entry:
        raise ExpertLoadError(f"{index}: shard entry {entry!r} is not a file name")
    norm = posixpath.normpath(entry.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or Path(entry).is_absolute():
        raise ExpertLoadError(f"{index}: shard path {entry!r} leaves the checkpoint folder {folder}")
    path = folder / norm
    root = folder.resolve()
    where = path.parent.resolve()  # a linked file is fine (the HF cache links blobs); a linked folder is not
    if where != root and root not in where.parents:
        raise ExpertLoadError(f"{index}: shard path {entry!r} leaves the checkpoint folder {folder} (through a link)")
    return path


class CheckpointReader:
    """Lazy per-tensor access to a checkpoint folder (safetensors; ``.bin`` only if allowed)."""

    def __init__(self, folder: str | Path, allow_bin: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ExpertLoadError(f"{self.folder}: is a file, not a folder; a checkpoint is a folder (config.json, "
                                  "model.safetensors); pass the folder that holds it")
        if not self.folder.is_dir():
            raise ExpertLoadError(f"{self.folder}: checkpoint folder not found")
        self.allow_bin = allow_bin
        wm = _weight_map(self.folder, allow_bin)
        self._handles: dict[Path, object] = {}
        if "" in wm:  # single file: list its keys
            f = wm[""]
            wm = {k: f for k in self._handle(f).keys()}
        self._files = wm
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def _handle(self, f: Path):
        h = self._handles.get(f)
        if h is None:
            try:
                if f.suffix == ".safetensors":
                    from safetensors import safe_open

                    h = safe_open(str(f), framework="pt")
                else:
                    h = _BinHandle(torch.load(str(f), map_location="cpu", weights_only=True, mmap=True))
            except Exception as err:
                raise ExpertLoadError(f"{f}: corrupt or unreadable weights file ({err})") from None
            self._handles[f] = h
        return h

    def keys(self) -> list[str]:
        return sorted(self._files)

    def file_of(self, key: str) -> Path:
        return self._files[key]

    def files(self) -> list[Path]:
        return sorted(set(self._files.values()))

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def _slice(self, key: str):
        f = self._files[key]
        h = self._handle(f)
        try:
            return h.get_slice(key)
        except Exception as err:
            raise ExpertLoadError(f"{f}: tensor `{key}` cannot be read ({err})") from None

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._meta:
            s = self._slice(key)
            self._meta[key] = (tuple(s.get_shape()), _st_dtype(s.get_dtype()))
        return self._meta[key][0]

    def dtype(self, key: str) -> torch.dtype:
        self.shape(key)
        return self._meta[key][1]

    def get(self, key: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        f = self._files.get(key)
        if f is None:
            raise ExpertLoadError(f"{self.folder}: checkpoint has no tensor `{key}`")
        try:
            t = self._handle(f).get_tensor(key)
        except ExpertLoadError:
            raise
        except Exception as err:
            raise ExpertLoadError(f"{f}: tensor `{key}` cannot be read ({err})") from None
        return t.to(device=device, dtype=dtype) if dtype is not None or str(device) != "cpu" else t

    def edge_rows(self, key: str) -> torch.Tensor:
        """The first and the last row of a tensor (the whole of a scalar), read without the rest:
        a cheap sample for telling two checkpoints of one architecture apart."""
        shape = self.shape(key)
        if not shape or shape[0] <= 2 or isinstance(self._handle(self._files[key]), _BinHandle):
            t = self.get(key)
            return t if not shape or shape[0] <= 2 else torch.cat([t[:1], t[-1:]])
        s = self._slice(key)
        try:
            return torch.cat([s[0:1], s[shape[0] - 1:shape[0]]])
        except Exception as err:
            raise ExpertLoadError(f"{self._files[key]}: tensor `{key}` cannot be read ({err})") from None

    def check_readable(self) -> None:
        """Open every file and read every header; raises naming the broken file."""
        for f in self.files():
            h = self._handle(f)
            keys = set(h.keys())
            for k, kf in self._files.items():
                if kf == f and k not in keys:
                    raise ExpertLoadError(f"{f}: tensor `{k}` listed in the index is missing from the shard")


class _BinHandle:
    """``safe_open``-like view of a torch-loaded state dict."""

    def __init__(self, sd):
        if not isinstance(sd, dict):
            raise TypeError("expected a dict of tensors")
        self._sd = sd

    def keys(self):
        return list(self._sd)

    def get_tensor(self, key):
        return self._sd[key]

    def get_slice(self, key):
        t = self._sd[key]
        return _BinSlice(t)


class _BinSlice:
    def __init__(self, t: torch.Tensor):
        self._t = t

    def get_shape(self):
        return list(self._t.shape)

    def get_dtype(self):
        return self._t.dtype


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _st_dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    return _ST_DTYPES.get(str(d), torch.float32)


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Group keys (in order) into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for k, n in sizes.items():
        if shards[-1] and used + n > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(k)
        used += n
    return [s for s in shards if s]


def write_full_checkpoint(
    out_dir: str | Path,
    keys: Iterable[str],
    tensor_fn: Callable[[str], torch.Tensor],
    *,
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, torch.dtype],
    base_dir: str | Path | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    progress: bool = False,
) -> list[Path]:
    """Write a sharded safetensors checkpoint into an existing folder, one shard in memory at a time.

    ``tensor_fn(key)`` returns the tensor to save (cast to ``dtypes[key]``). Writes
    ``model.safetensors`` (one shard) or ``model-0000i-of-0000n.safetensors`` + index, and copies
    config/tokenizer files from ``base_dir``.
    """
    from evomerge.io import save_safetensors, write_json_atomic

    out_dir = Path(out_dir)
    keys = list(keys)
    sizes = {k: _numel(shapes[k]) * DTYPE_SIZES.get(dtypes[k], 4) for k in keys}
    shards = plan_shards(sizes, max_shard_bytes)
    n = len(shards)
    names = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    bar = _progress(len(keys), progress, "writing")
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    for name, shard in zip(names, shards):
        tensors = {}
        for k in shard:
            tensors[k] = tensor_fn(k).detach().to("cpu", dtypes[k]).contiguous()
            weight_map[k] = name
            bar.update(1)
        save_safetensors(tensors, str(out_dir / name), metadata={"format": "pt"})
        written.append(out_dir / name)
        del tensors
    bar.close()
    if n > 1:
        write_json_atomic(
            out_dir / SAFE_INDEX, {"metadata": {"total_size": int(sum(sizes.values()))}, "weight_map": weight_map}
        )
    if base_dir is not None:
        for f in COPY_FILES:
            src = Path(base_dir) / f
            if src.is_file():
                shutil.copyfile(src, out_dir / f)
    return written


def save_full_checkpoint(out_dir: str | Path, *args, overwrite: bool = False, **kwargs) -> Path:
    """Atomic :func:`write_full_checkpoint` into a new folder ``out_dir``."""
    from evomerge.io import atomic_dir

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_full_checkpoint(tmp, *args, **kwargs)
    return Path(out_dir)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="tensor", leave=False)
