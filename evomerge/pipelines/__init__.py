"""The four pipelines, each a subpackage above the library: ``merge`` (one merge from config
to files), ``evolve`` (one GENOME or Model Swarms run on Ray actors), ``scale`` (fitness
against the number of merged experts, stop rules and report) and ``tune`` (Optuna studies
over the others). ``inputs`` is what the pipelines that start population actors share: the
experts as numpy dicts and a picklable evaluator recipe.

The CLI (``evomerge.cli``) and ``jobs/`` call one pipeline function each; nothing in the
library imports from here.
"""
