"""Merge operators; importing this package registers them all."""

from evomerge.merging.methods import data_aware, emr, linear, slerp, sparse  # noqa: F401

__all__ = ["data_aware", "emr", "linear", "slerp", "sparse"]
