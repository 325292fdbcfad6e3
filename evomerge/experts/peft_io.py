"""Read and write peft LoRA adapter folders.

Key mapping: adapter key ``base_model.model.<module>.lora_A[.<adapter>].weight`` <-> base weight
``<module>.weight``. Scale per module is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
rsLoRA), with ``rank_pattern`` / ``alpha_pattern`` matched the way peft matches them.

Written adapters fold each module's scale into ``B`` and set ``lora_alpha = r`` per module
(``use_rslora`` off), so every module's scale is exactly 1 and ranks may differ (``rank_pattern``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from evomerge.errors import ExpertLoadError
from evomerge.experts.checkpoint_io import check_finite_tensor, read_json_object
from evomerge.experts.types import LoraModule

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_UNSUPPORTED = {
    "lora_embedding_A": "LoRA on embedding layers",
    "lora_embedding_B": "LoRA on embedding layers",
    "lora_magnitude_vector": "DoRA (use_dora)",
    "modules_to_save": "modules_to_save (fully trained extra modules)",
}


@dataclass(frozen=True)
class PeftAdapter:
    """A loaded adapter: modules keyed by base weight name, its config and its weights file
    (``file_keys``: ``(base weight name, "A" | "B")`` -> the tensor's key in that file)."""

    path: Path
    weights_file: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    file_keys: dict[tuple[str, str], str] = field(default_factory=dict)


def check_adapter_finite(ad: PeftAdapter) -> None:
    """A NaN/inf value in the adapter's factors raises naming its weights file and tensor key."""
    for name, m in ad.modules.items():
        for part, t in (("A", m.A), ("B", m.B)):
            check_finite_tensor(t, ad.weights_file, ad.file_keys.get((name, part)) or weight_to_peft_key(name, part))


def is_peft_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def peft_key_to_weight(key: str) -> tuple[str, str]:
    """Map an adapter tensor key to ``(base weight name, "A" | "B")``; ``ValueError`` if not a LoRA key."""
    k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    m = _LORA_KEY.match(k)
    if m is None:
        raise ValueError(key)
    return m.group("module") + ".weight", m.group("part")


def weight_to_peft_key(weight_name: str, part: str) -> str:
    """Inverse of :func:`peft_key_to_weight` (no adapter name, as peft saves it)."""
    if not weight_name.endswith(".weight"):
        raise ValueError(f"{weight_name}: LoRA targets a `.weight` parameter")
    return f"{PEFT_PREFIX}{weight_name[: -len('.weight')]}.lora_{part}.weight"


def match_pattern(patterns: Mapping[str, Any], module: str) -> str | None:
    """The first pattern key matching ``module`` (peft semantics: regex on a dotted suffix)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    return float(alpha) / (math.sqrt(r) if use_rslora else r)


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_CONFIG
    cfg = read_json_object(path, "adapter config")
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ExpertLoadError(f"{path}: peft_type {peft_type!r} is not supported (only LORA)")
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if cfg.get(flag):
            raise ExpertLoadError(f"{path}: {what} (`{flag}: true`) is not supported")
    if cfg.get("modules_to_save"):
        raise ExpertLoadError(
            f"{path}: modules_to_save {cfg['modules_to_save']} is not supported (only LoRA factors are merged)"
        )
    if cfg.get("bias", "none") not in ("none", None):
        raise ExpertLoadError(f"{path}: bias={cfg['bias']!r} is not supported (use bias='none')")
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or cfg[field] <= 0:
            raise ExpertLoadError(f"{path}: `{field}` must be a positive number. Got {cfg.get(field)!r} instead.")
    return cfg


def adapter_weights_file(folder: Path, allow_bin: bool) -> Path:
    folder = Path(folder)
    st = folder / ADAPTER_SAFETENSORS
    if st.is_file():
        return st
    binf = folder / ADAPTER_BIN
    if binf.is_file():
        if not allow_bin:
            raise ExpertLoadError(
                f"{binf}: pickle .bin weights are refused by default; pass --allow-bin "
                "(loaded with torch.load(weights_only=True)) or convert to safetensors"
            )
        return binf
    raise ExpertLoadError(f"{st}: adapter weights not found (expected {ADAPTER_SAFETENSORS})")


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a small file (adapter weights); errors name the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ExpertLoadError(f"{path}: corrupt or unreadable safetensors file ({err})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExpertLoadError(f"{path}: cannot read .bin weights ({type(err).__name__}: {err})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ExpertLoadError(f"{path}: expected a dict of tensors")
    return sd


def load_peft_adapter(folder: str | Path, allow_bin: bool = False, check_finite: bool = True) -> PeftAdapter:
    """Load a peft LoRA adapter folder into ``{base weight name: LoraModule}``.

    With ``check_finite``, a NaN/inf value raises naming the file and the tensor key
    (:func:`check_adapter_finite`; without it, a caller may run that check later).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExpertLoadError(f"{folder}: adapter folder not found")
    cfg = read_adapter_config(folder)
    wfile = adapter_weights_file(folder, allow_bin)
    sd = read_tensor_file(wfile)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    file_keys: dict[tuple[str, str], str] = {}
    for key, t in sd.items():
        for marker, what in _UNSUPPORTED.items():
            if f".{marker}" in key or key.startswith(marker):
                raise ExpertLoadError(f"{wfile}: tensor `{key}`: {what} is not supported")
        try:
            name, part = peft_key_to_weight(key)
        except ValueError:
            raise ExpertLoadError(f"{wfile}: tensor `{key}` is not a LoRA factor (lora_A/lora_B weight)") from None
        if part in factors.setdefault(name, {}):
            raise ExpertLoadError(f"{wfile}: two tensors for lora_{part} of `{name}` (several adapters in one file?)")
        factors[name][part] = t
        file_keys[(name, part)] = key
    if not factors:
        raise ExpertLoadError(f"{wfile}: no LoRA tensors found")
    use_rslora = bool(cfg.get("use_rslora", False))
    fan = bool(cfg.get("fan_in_fan_out", False))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    modules: dict[str, LoraModule] = {}
    for name in sorted(factors):
        f = factors[name]
        if set(f) != {"A", "B"}:
            missing = ({"A", "B"} - set(f)).pop()
            raise ExpertLoadError(f"{wfile}: `{name}` has no lora_{missing} tensor")
        a, b = f["A"], f["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ExpertLoadError(
                f"{wfile}: `{name}`: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a product"
            )
        module = name[: -len(".weight")]
        r = int(a.shape[0])
        rk = match_pattern(rank_pattern, module)
        r_cfg = int(rank_pattern[rk]) if rk is not None else int(cfg["r"])
        if r_cfg != r:
            raise ExpertLoadError(f"{wfile}: `{name}` has rank {r} but {ADAPTER_CONFIG} says r={r_cfg}")
        ak = match_pattern(alpha_pattern, module)
        alpha = float(alpha_pattern[ak]) if ak is not None else float(cfg["lora_alpha"])
        modules[name] = LoraModule(A=a, B=b, scale=lora_scale(alpha, r, use_rslora), fan_in_fan_out=fan)
    ad = PeftAdapter(path=folder, weights_file=wfile, config=cfg, modules=modules, file_keys=file_keys)
    if check_finite:
        check_adapter_finite(ad)
    return ad


def build_adapter_config(
    modules: Mapping[str, LoraModule], template: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An adapter config for ``modules`` with every scale folded into B (alpha = r per module)."""
    if not modules:
        raise ValueError("no LoRA modules to save")
    fans = {m.fan_in_fan_out for m in modules.values()}
    if len(fans) > 1:
        raise ValueError("modules mix fan_in_fan_out true and false; peft stores one flag per adapter")
    ranks = {name[: -len(".weight")]: m.rank for name, m in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {mod: rk for mod, rk in ranks.items() if rk != r}
    cfg: dict[str, Any] = dict(template or {})
    for drop in ("layer_replication", "layers_to_transform", "layers_pattern", "exclude_modules",
                 "target_parameters", "trainable_token_indices", "eva_config", "corda_config",
                 "loftq_config", "megatron_config", "runtime_config", "qalora_group_size"):
        cfg.pop(drop, None)
    cfg.update(
        peft_type="LORA",
        r=r,
        lora_alpha=r,
        use_rslora=False,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=sorted(ranks),
        fan_in_fan_out=fans.pop(),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=None,
        use_dora=False,
        inference_mode=True,
        init_lora_weights=True,
    )
    cfg.setdefault("task_type", None)
    cfg.setdefault("base_model_name_or_path", None)
    return cfg


def write_peft_adapter(
    modules: Mapping[str, LoraModule],
    out_dir: str | Path,
    adapter_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into an existing folder."""
    from evomerge.io import save_safetensors, write_json_atomic

    out_dir = Path(out_dir)
    cfg = build_adapter_config(modules, adapter_config)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in sorted(modules.items()):
        tensors[weight_to_peft_key(name, "A")] = m.A.detach().to("cpu", dtype).contiguous()
        tensors[weight_to_peft_key(name, "B")] = (m.B.detach().to("cpu", torch.float32) * m.scale).to(dtype).contiguous()
    save_safetensors(tensors, str(out_dir / ADAPTER_SAFETENSORS), metadata={"format": "pt"})
    write_json_atomic(out_dir / ADAPTER_CONFIG, cfg)
    return cfg


def save_peft_adapter(
    modules: Mapping[str, LoraModule],
    out_dir: str | Path,
    adapter_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Atomically write a peft adapter folder that ``PeftModel.from_pretrained`` loads."""
    from evomerge.io import atomic_dir

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_peft_adapter(modules, tmp, adapter_config, dtype)
    return Path(out_dir)
