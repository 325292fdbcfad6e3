"""The scale experiment's parts: expert order, stop rule and cells (plan), Ray execution,
the append-only cell store and the result tables. The entry point is
:func:`evomerge.driver.run_scale`; the report is :func:`evomerge.report.write_report`."""

from evomerge.scale.ordering import low_correlation_order, order_experts
from evomerge.scale.plan import Cell, StopRule, build_cells, load_cells, stop_rule
from evomerge.scale.store import CellStore
from evomerge.scale.tables import fitness_table, peaks

__all__ = [
    "Cell", "CellStore", "StopRule", "build_cells", "fitness_table", "load_cells", "low_correlation_order",
    "order_experts", "peaks", "stop_rule",
]
