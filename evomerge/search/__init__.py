"""GENOME and Model Swarms as ask/tell state machines over recipes (no Ray, no I/O, no weights)."""

from evomerge.search.factory import SEARCHES, check_search_name, make_search
from evomerge.search.genome import Genome
from evomerge.search.operators import CROSSOVER_METHODS, materialize
from evomerge.search.recipe import Op, Phase, Recipe, expert_id, velocity_key
from evomerge.search.swarm import Swarm

__all__ = [
    "CROSSOVER_METHODS", "SEARCHES", "Genome", "Op", "Phase", "Recipe", "Swarm", "check_search_name", "expert_id",
    "make_search", "materialize", "velocity_key",
]
