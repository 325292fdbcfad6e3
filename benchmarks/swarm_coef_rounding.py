"""How far Model Swarms' coefficient moves round from the moves iterated on fp32 weights.

    python benchmarks/swarm_coef_rounding.py [--iters 20] [--experts 10] [--zoo default]

The default zoo's first ``--experts`` experts in ``ab`` and ``delta`` space, Model Swarms at its
defaults (with and without the ``init_merges`` starts), random fitness (a function of the id, so
both paths take the same decisions): every move is materialised from its coefficients
(``evomerge.search.linear``: one weighted sum of the basis) and from the same recipe without
them (the move on the stored position and velocity, fp32), and the largest difference of any
output tensor is printed, absolute and relative to that tensor's largest entry. About 30 s.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import torch

from evomerge.config import config_from_dict
from evomerge.config.sections import SwarmConfig
from evomerge.pipelines.inputs import prepare_inputs
from evomerge.search import Swarm, linear, materialize
from evomerge.zoo.zoo import ensure_zoo


def compare(experts: dict, cfg: SwarmConfig) -> tuple[int, float, float]:
    s = Swarm(cfg, len(experts), seed=0)
    coef_store, weight_store = dict(experts), dict(experts)
    worst_abs = worst_rel = 0.0
    while not s.done:
        recipes = s.ask()
        for r in recipes:
            a = materialize(r, {k: coef_store[k] for k in r.input_keys()})
            b = materialize(linear.on_weights(r), weight_store)
            coef_store.update(a)
            weight_store.update(b)
            if r.op == "pso_move":
                for key in a:
                    for name, t in a[key].items():
                        d = (t - b[key][name]).abs().max().item()
                        worst_abs = max(worst_abs, d)
                        worst_rel = max(worst_rel, d / max(b[key][name].abs().max().item(), 1e-30))
        s.tell({r.id: float(np.random.default_rng(zlib.crc32(r.id.encode())).random()) for r in recipes})
    return sum(h["op"] == "pso_move" for h in s.history), worst_abs, worst_rel


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--zoo", default="default")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = list(ensure_zoo(args.zoo).tasks[: args.experts])
    for space in ("ab", "delta"):
        inp = prepare_inputs(config_from_dict({"evaluation": {"max_samples": 4}}), experts=names, tasks=names[:1],
                             zoo_profile=args.zoo, space=space)
        experts = {k: {n: torch.from_numpy(np.array(a)) for n, a in d.items()} for k, d in inp.experts.items()}
        for merges in ([], ["ties", "dare_ties"]):
            cfg = SwarmConfig(max_iter=args.iters, patience=10 * args.iters, init_merges=merges, max_particles=10)
            moves, worst_abs, worst_rel = compare(experts, cfg)
            print(f"{space:5s} init_merges={merges}: {moves} moves, max abs difference {worst_abs:.3g}, "
                  f"max relative to the tensor's largest entry {worst_rel:.3g}", flush=True)


if __name__ == "__main__":
    main()
