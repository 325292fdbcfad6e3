"""The one place seeds are derived: every random stream of evomerge is seeded from a run seed
and a few words (a stream tag, a generation, an index, a tensor key) through :func:`derive_seed`.

``derive_seed`` hashes the words with blake2b, so a seed is stable across processes, machines
and Python versions (unlike ``hash``) and does not depend on the order keys are visited.

RHT noise: a config's ``rht.seed`` gives the same noise for a tensor key wherever RHT runs
(``merge``, ``evolve``, ``scale``, ``tune``): :func:`rht_seed` maps ``(rht.seed, replicate)``
to the seed :func:`evomerge.merging.rht.apply_rht` takes, and replicate 0 (every pipeline's default)
is ``rht.seed`` itself. ``scale`` repeats a cell with replicates 1, 2, ... for its seed spread.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*words: int | str) -> int:
    """A 63-bit seed from integers and strings (blake2b of the words joined by NUL)."""
    text = "\x00".join(str(int(w)) if not isinstance(w, str) else w for w in words)
    h = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & _MASK63


def derive_rng(*words: int | str) -> np.random.Generator:
    """A numpy Generator (PCG64) seeded from the words; nothing to save to reproduce it."""
    return np.random.Generator(np.random.PCG64(derive_seed(*words)))


def tensor_seed(seed: int, key: str, salt: str = "") -> int:
    """Seed of one tensor's draws: results do not depend on which process merges which key."""
    return derive_seed(salt, seed, key)


def tensor_generator(seed: int, key: str, device: torch.device | str = "cpu", salt: str = "") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`tensor_seed`."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(tensor_seed(seed, key, salt))
    return g


def rht_seed(seed: int, replicate: int = 0) -> int:
    """RHT noise seed of a config's ``rht.seed``; ``replicate`` r > 0 gives the r-th independent
    repeat (scale's seed spread). Replicate 0 is ``seed`` itself, so ``merge``, ``evolve`` and
    ``scale`` draw the same noise from the same config."""
    if int(replicate) == 0:
        return int(seed)
    return derive_seed("rht-replicate", seed, replicate)
