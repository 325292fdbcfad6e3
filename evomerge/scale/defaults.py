"""The configuration ``evomerge scale`` uses when no ``--config`` is given.

Sized to finish within about 15 minutes on 2 CPU cores for the built-in default zoo: registry
merges at every k up to the stop rule's n_max, and GENOME / Model Swarms with tiny budgets at
a few k only. Print it with ``evomerge scale --print-default-config``.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SCALE_CONFIG: dict[str, Any] = {
    "seed": 0,
    "evaluation": {"metric": "token_accuracy", "max_samples": 64, "batch_size": 64},
    "scale": {
        "methods": ["task_arithmetic", "ties", "dare_ties", "emr"],
        "search": ["genome", "swarm"],
        "search_k": [2, 4],
        "with_rht": True,
        "seeds": [0, 1],
        "order": "low_correlation",
        "delta": "adaptive",
        "stop": True,
    },
    "genome": {"population": 4, "generations": 2, "early_stop_iter": 2},
    "swarm": {"max_iter": 2, "patience": 2},
}


def default_config():
    from evomerge.config import config_from_dict

    return config_from_dict(DEFAULT_SCALE_CONFIG, "built-in scale config")
