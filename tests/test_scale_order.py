"""Expert ordering and the cell plan of the scale driver (pure; no Ray, no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.config.sections import ScaleConfig
from evomerge.errors import ConfigError
from evomerge.scale.ordering import low_correlation_order, order_experts
from evomerge.scale.plan import build_cells, stop_rule
from evomerge.theory import estimate_sigma_rho, n_max

# A hand-made correlation matrix of 5 experts.
#   least correlated pair: (1, 3) at -0.30
#   then mean corr with {1, 3}: e0 (0.20+0.10)/2=0.15, e2 (0.50+0.40)/2=0.45, e4 (0.05+0.00)/2=0.025 -> e4
#   then with {1, 3, 4}: e0 (0.20+0.10+0.60)/3=0.30, e2 (0.50+0.40-0.10)/3=0.2667 -> e2, then e0
HAND = np.array(
    [
        [1.00, 0.20, 0.70, 0.10, 0.60],
        [0.20, 1.00, 0.50, -0.30, 0.05],
        [0.70, 0.50, 1.00, 0.40, -0.10],
        [0.10, -0.30, 0.40, 1.00, 0.00],
        [0.60, 0.05, -0.10, 0.00, 1.00],
    ]
)


def test_low_correlation_order_matches_hand_computation():
    assert low_correlation_order(HAND) == [1, 3, 4, 2, 0]


def test_low_correlation_ties_go_to_lower_index():
    corr = np.full((4, 4), 0.5)
    np.fill_diagonal(corr, 1.0)
    assert low_correlation_order(corr) == [0, 1, 2, 3]


def test_order_from_real_task_vectors():
    """Experts built with known correlations: e0/e1 share a component (corr ~0.9), e2 is
    independent of both, e3 anti-correlated with e2; the estimator's matrix drives the order."""
    g = torch.Generator().manual_seed(0)
    d = 20000
    z = torch.randn(4, d, generator=g)
    e0 = z[0]
    e1 = 0.9 * z[0] + (1 - 0.81) ** 0.5 * z[1]
    e2 = z[2]
    e3 = -0.5 * z[2] + 0.75**0.5 * z[3]
    tv = torch.stack([e0, e1, e2, e3])
    _, _, corr = estimate_sigma_rho(tv)
    np.testing.assert_allclose(corr, np.corrcoef(tv.numpy()), atol=1e-9)
    order = order_experts(4, "low_correlation", seed=0, corr=corr)
    assert order[:2] == [2, 3]  # the -0.5 pair first
    assert set(order[2:]) == {0, 1}


def test_given_and_random_orders():
    assert order_experts(4, "given", seed=3) == [0, 1, 2, 3]
    a = order_experts(6, "random", seed=1)
    assert sorted(a) == list(range(6))
    assert a == order_experts(6, "random", seed=1)
    assert a == [int(i) for i in np.random.default_rng(1).permutation(6)]
    with pytest.raises(ConfigError, match="correlation matrix"):
        order_experts(3, "low_correlation", seed=0)


def test_stop_rule_matches_theory_and_bounds_k():
    cfg = ScaleConfig(methods=["task_arithmetic"], delta=0.01, seeds=[0])
    rule = stop_rule(0.2, 0.1, 10, cfg)
    # drop(n) = 0.2*0.9/(n(n-1)) >= 0.01  <=>  n(n-1) <= 18  -> n = 4 (4*3=12; 5*4=20)
    assert rule.n_max == 4 == n_max(0.2, 0.1, 0.01)
    assert rule.k_end == 4 and rule.enabled
    no_stop = stop_rule(0.2, 0.1, 10, cfg, stop=False)
    assert no_stop.k_end == 10 and no_stop.n_max == 4 and not no_stop.enabled
    adaptive = stop_rule(0.2, 0.1, 10, ScaleConfig(methods=["ties"], seeds=[0]))
    # adaptive delta = sigma2 (1-rho) / N = 0.018 -> n(n-1) <= 10 -> n = 3
    assert adaptive.delta == pytest.approx(0.018) and adaptive.n_max == 3
    with pytest.raises(ConfigError, match="at least 2 experts"):
        stop_rule(0.2, 0.1, 1, cfg)


def test_cells_share_work_across_seeds_only_when_the_seed_cannot_matter():
    cfg = ScaleConfig(methods=["task_arithmetic", "dare_ties"], search=["genome"], search_k=[2], seeds=[0, 1], with_rht=True)
    orders = {0: [2, 0, 1], 1: [2, 0, 1]}
    cells = build_cells(cfg, orders, 3, random_methods=frozenset({"dare_ties"}), order_random=False)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    base = [c for c in cells if c.kind == "base"]
    assert len(base) == 1 and base[0].seeds == (0, 1)
    ta_plain = [c for c in cells if c.method == "task_arithmetic" and not c.rht and c.k == 2]
    assert len(ta_plain) == 1 and ta_plain[0].seeds == (0, 1) and ta_plain[0].experts == (2, 0)
    ta_rht = [c for c in cells if c.method == "task_arithmetic" and c.rht and c.k == 2]
    assert [c.seeds for c in ta_rht] == [(0,), (1,)]
    dare = [c for c in cells if c.method == "dare_ties" and not c.rht and c.k == 3]
    assert [c.seeds for c in dare] == [(0,), (1,)]
    search = [c for c in cells if c.kind == "search"]
    assert [(c.k, c.seed) for c in search] == [(2, 0), (2, 1)]
    assert [c.k for c in cells] == sorted(c.k for c in cells)  # executed k by k


def test_random_order_gives_each_seed_its_own_subsets():
    cfg = ScaleConfig(methods=["ties"], seeds=[0, 1], with_rht=False, order="random")
    orders = {0: [1, 0, 2], 1: [2, 1, 0]}
    cells = build_cells(cfg, orders, 2, random_methods=frozenset(), order_random=True)
    k2 = {c.seed: c.experts for c in cells if c.kind == "merge" and c.k == 2}
    assert k2 == {0: (1, 0), 1: (2, 1)}
    experts = {c.seed: c.experts for c in cells if c.kind == "expert"}
    assert experts == {0: (1,), 1: (2,)}


def test_scale_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown merge method"):
        ScaleConfig(methods=["nope"])
    with pytest.raises(ConfigError, match="method_params.ties"):
        ScaleConfig(methods=["task_arithmetic"], method_params={"ties": {}})
    with pytest.raises(ConfigError, match="k_max"):
        ScaleConfig(methods=["ties"], k_min=3, k_max=2)
