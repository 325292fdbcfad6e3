"""The torch device a user asked for, or a clear error (no CUDA, unknown device name)."""

from __future__ import annotations

import torch

from evomerge.errors import ConfigError


def resolve_device(device: str | torch.device, source: str = "--device") -> torch.device:
    """A torch device; :class:`ConfigError` when it is unknown or CUDA is asked for but absent.
    ``source`` names the setting in the message (a flag, or a function's parameter)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{source}: unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{source} {device}: CUDA is not available on this machine (torch {torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{source}: unsupported device {device!r} (use cpu, cuda or cuda:N)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{source} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
