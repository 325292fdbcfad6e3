"""Ray execution of evolutionary search: population actors, placement, records, faults.

``ray`` is imported only inside the functions that use it, so the rest of evomerge (and the
actor class itself) works where Ray is not installed.
"""

from evomerge.distributed.actors import EvalRow, PopulationActor, numpy_to_td, td_to_numpy
from evomerge.distributed.cluster import ActorPlan, plan_actors
from evomerge.distributed.pool import ActorLostError, PopulationPool

__all__ = ["ActorLostError", "ActorPlan", "EvalRow", "PopulationActor", "PopulationPool", "numpy_to_td",
           "plan_actors", "td_to_numpy"]
