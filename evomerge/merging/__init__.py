"""Pure merge operators over task vectors (no files, no Ray, seeds passed in)."""

from evomerge.merging.registry import (
    MergeMethod,
    Param,
    all_methods,
    available_methods,
    get_merge_method,
    register_merge,
)

__all__ = ["MergeMethod", "Param", "all_methods", "available_methods", "get_merge_method", "register_merge"]
