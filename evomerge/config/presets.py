"""Named presets for a config section (``preset: paper``): the settings a paper's runs used.

A preset fills the keys it names; an explicit key that says otherwise is refused, naming the
key, so a run labelled "paper" always ran with the paper's settings.
"""

from __future__ import annotations

from typing import Any, Mapping

from evomerge.errors import ConfigError

# GENOME (Zhang et al. 2025) as the seed paper's runs used it: N = 10 for 10 generations,
# DARE-TIES (density 0.7) for init and crossover, coverage-forcing pairs, no early stop.
GENOME_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "population": 10, "generations": 10, "cross_rate": 0.3, "ind_mut_rate": 0.1, "gene_mut_rate": 0.1,
        "sigma": 0.001, "elite_percent": 0.1, "init_merge": "dare_ties", "crossover": "dare_ties", "density": 0.7,
        "early_stop": False, "init_pairs": "coverage", "init_sums": [], "init_merges": [], "select_margin": 0.0,
        "mutation": "gauss", "space": "ab",
    },
}

# Model Swarms (Feng et al., ICML 2025): the paper's defaults.
SWARM_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "max_particles": None, "max_iter": 200, "inertia": 0.4, "cognitive": 0.3, "social": 0.3, "repel": 0.3,
        "step": 1.0, "step_decay": 0.95, "min_step": 0.1, "patience": 10, "restart_patience": 0.5,
        "init_velocity": "random", "init_sums": [], "init_merges": [], "select_margin": 0.0, "space": "ab",
    },
}


def apply_preset(section: str, presets: Mapping[str, Mapping[str, Any]], data: Any) -> Any:
    """``data`` with the named preset's keys filled in; a contradicting explicit key is refused."""
    if not isinstance(data, Mapping) or data.get("preset") is None:
        return data
    name = data["preset"]
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(f"`{section}.preset` must be one of {sorted(presets)}. Got {name!r} instead.")
    out = dict(data)
    problems = [((f"{section}.{key}", f"{section}.preset"),
                 f"`{section}.{key}` is {out[key]!r} but `{section}.preset: {name}` sets it to {value!r}; remove one of them")
                for key, value in presets[name].items() if key in out and out[key] != value]
    if problems:  # every contradicting key, one line each, blamed on where it and the preset were set
        from evomerge.config.sections import key_errors

        raise key_errors(problems)
    out.update(presets[name])
    return out
