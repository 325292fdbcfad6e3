"""The built-in expert zoo: generated tasks, a tiny base model, one LoRA and one full fine-tune per task."""

from evomerge.zoo.zoo import (
    FORMAT_VERSION, Zoo, default_cache_dir, default_zoo_root, ensure_zoo, shipped_root, zoo_root_in_use,
)


def build_zoo(*args, **kwargs):
    """See :func:`evomerge.zoo.build.build_zoo` (imported lazily: it pulls in transformers/peft)."""
    from evomerge.zoo.build import build_zoo as _build

    return _build(*args, **kwargs)


__all__ = ["FORMAT_VERSION", "Zoo", "build_zoo", "default_cache_dir", "default_zoo_root", "ensure_zoo", "shipped_root",
           "zoo_root_in_use"]
