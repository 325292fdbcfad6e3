"""The scale experiment's parts: expert order, stop rule and cells (plan), Ray execution,
the append-only cell store and the result tables. The entry point is
:func:`evomerge.pipelines.scale.driver.run_scale`; the report is :func:`evomerge.pipelines.scale.report.write_report`."""

from evomerge.pipelines.scale.ordering import low_correlation_order, order_experts
from evomerge.pipelines.scale.plan import Cell, StopRule, build_cells, load_cells, stop_rule
from evomerge.pipelines.scale.store import CellStore
from evomerge.pipelines.scale.tables import fitness_table, peaks

__all__ = [
    "Cell", "CellStore", "StopRule", "build_cells", "fitness_table", "load_cells", "low_correlation_order",
    "order_experts", "peaks", "stop_rule",
]
