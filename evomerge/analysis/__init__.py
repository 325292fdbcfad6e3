"""Pool analysis: the theory's numbers for a real pool, as Parquet tables, PNG figures and JSON."""

from evomerge.analysis.analyze import AnalysisResult, analyze_pool
from evomerge.analysis.figures import plot_fitness_vs_k

__all__ = ["AnalysisResult", "analyze_pool", "plot_fitness_vs_k"]
