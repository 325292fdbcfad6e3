"""Parameter schemas shared by several operators (one definition, so ranges agree)."""

from evomerge.merging.registry import Param

LAMBDA = Param(
    "lambda", float, 1.0, low=-10.0, high=10.0,
    help="scale of the merged task vector", tune_low=0.1, tune_high=1.5, arg="lam",
)
DENSITY = Param(
    "density", float, 0.2, low=0.0, high=1.0, low_open=True,
    help="fraction of each task vector kept", tune_low=0.05, tune_high=1.0,
)
SIGN = Param(
    "majority_sign_method", str, "total", choices=("total", "frequency"),
    help="elect the sign by the sum of values (total) or by counting signs (frequency)",
)
DISJOINT = Param(
    "disjoint", str, "count", choices=("count", "weighted"),  # "sum" is magnitude_ties' own, not offered here
    help="disjoint mean over the experts agreeing with the elected sign: divide by their number "
    "(count, peft) or by the sum of their weights (weighted: a true weighted mean; 0 where that sum is 0)",
)
RNG = Param(
    "rng", str, "fast", choices=("fast", "peft"),
    help="DARE mask draws: fast (exact 32-bit keep probability, depends only on the generator's seed; "
    "one stream on CPU, an in-kernel Philox stream on CUDA) or peft (torch.rand like torch.bernoulli: "
    "peft's CPU mask bit for bit, ~3x slower)",
)
