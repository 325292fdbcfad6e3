"""The scale experiment's parts: expert order, stop rule and cells (plan), Ray execution,
the append-only cell store and the result tables. The entry point is
:func:`evomerge.pipelines.scale.driver.run_scale`; the report is :func:`evomerge.pipelines.scale.report.write_report`.

The names below are loaded on first use, so importing one light module of the package (the CLI
imports ``start``/``side`` to start a child process before anything else) does not import torch."""

_WHERE = {
    "low_correlation_order": "ordering", "order_experts": "ordering", "Cell": "plan", "StopRule": "plan",
    "build_cells": "plan", "load_cells": "plan", "stop_rule": "plan", "CellStore": "store", "fitness_table": "tables",
    "peaks": "tables",
}

__all__ = [
    "Cell", "CellStore", "StopRule", "build_cells", "fitness_table", "load_cells", "low_correlation_order",
    "order_experts", "peaks", "stop_rule",
]


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
