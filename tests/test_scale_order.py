"""Expert ordering and the cell plan of the scale driver (pure; no Ray, no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evomerge.config.sections import ScaleConfig
from evomerge.errors import ConfigError, DataError
from evomerge.pipelines.scale.ordering import low_correlation_order, order_experts
from evomerge.pipelines.scale.plan import build_cells, search_grid, stop_rule
from evomerge.theory import estimate_sigma_rho, n_max

# A hand-made correlation matrix of 5 experts.
HAND = np.array(
    [
        [1.00, 0.20, 0.70, 0.10, 0.60],
        [0.20, 1.00, 0.50, -0.30, 0.05],
        [0.70, 0.50, 1.00, 0.40, -0.10],
        [0.10, -0.30, 0.40, 1.00, 0.00],
        [0.60, 0.05, -0.10, 0.00, 1.00],
    ]
)


def test_low_correlation_order_uses_the_absolute_correlation():
    # least |corr|: (3, 4) at 0.00 (not the anti-aligned (1, 3) at -0.30);
    # then mean |corr| with {3, 4}: e0 (0.10+0.60)/2=0.35, e1 (0.30+0.05)/2=0.175, e2 (0.40+0.10)/2=0.25 -> e1
    # then with {3, 4, 1}: e0 (0.1+0.6+0.2)/3=0.30, e2 (0.4+0.1+0.5)/3=0.333 -> e0, then e2
    assert low_correlation_order(HAND) == [3, 4, 1, 0, 2]


def test_low_correlation_never_starts_with_an_expert_that_does_not_beat_the_base():
    # 3 and 4 lose to the base on their own tasks: the least |corr| pair with an eligible member is
    # (1, 4) at 0.05, eligible 1 first; then mean |corr| with {1, 4}: e0 0.40, e2 0.30, e3 0.15 -> e3;
    # then e0 (0.2+0.6+0.1)/3=0.30 < e2 (0.5+0.1+0.4)/3=0.333 -> e0, e2
    gains = [0.2, 0.1, 0.3, -0.1, -0.2]
    assert low_correlation_order(HAND, gains) == [1, 4, 3, 0, 2]
    # only 4 is eligible among the (3, 4) pair: it goes first
    assert low_correlation_order(HAND, [0.2, 0.1, 0.3, -0.1, 0.05])[:2] == [4, 3]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 9))
        a = rng.normal(size=(n, 2 * n))
        corr = np.corrcoef(a)
        g = rng.normal(size=n)
        if (g <= 0).all():
            with pytest.raises(ConfigError, match="no expert beats the base"):
                low_correlation_order(corr, g)
            continue
        order = low_correlation_order(corr, g)
        assert sorted(order) == list(range(n)) and g[order[0]] > 0


def test_gain_order_is_best_first_with_ties_to_the_lower_index():
    assert order_experts(5, "gain", seed=0, gains=[0.1, 0.3, 0.1, float("nan"), 0.5]) == [4, 1, 0, 2, 3]
    with pytest.raises(ConfigError, match="own-task gain"):
        order_experts(3, "gain", seed=0)


def test_low_correlation_ties_go_to_lower_index():
    corr = np.full((4, 4), 0.5)
    np.fill_diagonal(corr, 1.0)
    assert low_correlation_order(corr) == [0, 1, 2, 3]


def test_order_from_real_task_vectors():
    """Experts built with known correlations: e0/e1 share a component (corr ~0.9), e3 is
    anti-correlated with e2 (-0.5); e0/e1 and e2/e3 are independent. The |corr| order starts
    with an independent pair and never pairs the 0.9 twins first."""
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
    order = order_experts(4, "low_correlation", seed=0, corr=corr, gains=[0.1] * 4)
    assert {order[0], order[1]} & {0, 1} and {order[0], order[1]} & {2, 3}
    assert abs(corr[order[0], order[1]]) < 0.05


def test_given_and_random_orders():
    assert order_experts(4, "given", seed=3) == [0, 1, 2, 3]
    a = order_experts(6, "random", seed=1)
    assert sorted(a) == list(range(6))
    assert a == order_experts(6, "random", seed=1)
    assert a == [int(i) for i in np.random.default_rng(1).permutation(6)]
    with pytest.raises(ConfigError, match="correlation matrix"):
        order_experts(3, "low_correlation", seed=0)


def _equi(n, rho):
    c = np.full((n, n), rho)
    np.fill_diagonal(c, 1.0)
    return c


def test_stop_rule_matches_theory_and_never_cuts_the_registry_merges():
    cfg = ScaleConfig(methods=["task_arithmetic"], delta=0.01, seeds=[0])
    rule = stop_rule([0.2] * 10, _equi(10, 0.1), list(range(10)), cfg, sigma2=0.2, rho=0.1)
    # drop(n) = 0.2*0.9/(n(n-1)) >= 0.01  <=>  n(n-1) <= 18  -> n = 4 (4*3=12; 5*4=20)
    assert rule.n_max == 4 == n_max(0.2, 0.1, 0.01)
    assert rule.k_end == 10 and rule.enabled  # registry merges always run to the pool size
    assert rule.search_k == list(range(2, 11)) and rule.rule == "online"
    t1 = stop_rule([0.2] * 10, _equi(10, 0.1), list(range(10)), cfg.model_copy(update={"stop_rule": "theorem1"}),
                   sigma2=0.2, rho=0.1)
    assert t1.search_k == [2, 3, 4]  # the searches' grid is cut at Theorem 1's k
    adaptive = stop_rule([0.2] * 10, _equi(10, 0.1), list(range(10)), ScaleConfig(methods=["ties"], seeds=[0], delta="adaptive"),
                         sigma2=0.2, rho=0.1)
    # adaptive delta = sigma2 (1-rho) / N = 0.018 -> n(n-1) <= 10 -> n = 3
    assert adaptive.delta == pytest.approx(0.018) and adaptive.n_max == 3
    relative = stop_rule([0.2] * 10, _equi(10, 0.1), list(range(10)), ScaleConfig(methods=["ties"], seeds=[0]),
                         sigma2=0.2, rho=0.1)
    # relative 0.1 x first drop (0.09) = 0.009 -> n(n-1) <= 20 -> n = 5
    assert relative.delta == pytest.approx(0.009) and relative.n_max == 5
    for n in (3, 4):  # law_first_k = 4: the law needs its 4 points and a fifth k to predict
        with pytest.raises(ConfigError, match="at least 5 experts"):
            stop_rule([0.2] * n, _equi(n, 0.1), list(range(n)), cfg, sigma2=0.2, rho=0.1)
    with pytest.raises(ConfigError, match="law_first_k"):
        stop_rule([0.2] * 5, _equi(5, 0.1), list(range(5)), cfg.model_copy(update={"law_first_k": 6}), sigma2=0.2, rho=0.1)


def test_a_relative_delta_without_a_positive_drop_keeps_one_expert():
    """An expert with a far larger task vector second in the order: the uniform merge of two has a
    larger variance than the first alone (V(2) = (1 + 9) / 4 = 2.5 > V(1) = 1), so a relative (or
    adaptive) Delta has no positive drop to scale. Theorem 1 keeps experts while the variance falls
    (Delta recorded as None): here one; it was a refusal after the pool's statistics. A fixed
    Delta reads the same curve: the rise is a drop below it."""
    variances = [1.0, 9.0] + [1.0] * 4
    corr = np.eye(6)
    # adaptive: the mean drop (V(1) - V(6)) / 5 is positive here; with every later expert large,
    # V(6) = (1 + 5 x 9) / 36 = 1.28 > V(1), it is not
    for mode, var in (("relative", variances), ("adaptive", [1.0] + [9.0] * 5)):
        cfg = ScaleConfig(methods=["ties"], seeds=[0], delta=mode, k_max=6, law_first_k=3)
        rule = stop_rule(var, corr, list(range(6)), cfg, sigma2=1.0, rho=0.0)
        assert (rule.n_max, rule.delta) == (1, None), mode
        # each row: is its drop positive (Delta -> 0); V(k) = sum of the first k variances / k^2
        vk = [sum(var[:k]) / k**2 for k in range(1, 7)]
        assert [r["worth_adding"] for r in rule.curve] == [True] + [vk[k - 1] > vk[k] for k in range(1, 6)]
        assert rule.curve[1]["worth_adding"] is False
        assert rule.curve[1]["drop"] == pytest.approx(1.0 - 2.5)
    adaptive = stop_rule(variances, corr, list(range(6)), ScaleConfig(methods=["ties"], seeds=[0], delta="adaptive",
                                                                        law_first_k=3), sigma2=1.0, rho=0.0)
    assert adaptive.n_max == 1 and adaptive.delta > 0
    # adaptive, a positive first drop but no positive mean drop: V = 1, 0.275, 0.233, 0.925, ...
    # (variances 1, 0.1, 0.1 then large): kept while the variance falls, up to k = 3
    large = [1.0, 0.1, 0.1, 20.0, 20.0, 20.0]
    v = [sum(large[:k]) / k**2 for k in range(1, 7)]
    assert v[1] < v[0] and v[2] < v[1] and v[3] > v[2] and v[5] > v[0]
    rule = stop_rule(large, corr, list(range(6)), ScaleConfig(methods=["ties"], seeds=[0], delta="adaptive",
                                                             law_first_k=3), sigma2=1.0, rho=0.0)
    assert (rule.n_max, rule.delta) == (3, None)
    assert [r["worth_adding"] for r in rule.curve] == [True, True, True, False, v[4] < v[3], v[5] < v[4]]
    fixed = stop_rule(variances, corr, list(range(6)), ScaleConfig(methods=["ties"], seeds=[0], delta=0.01, law_first_k=3),
                      sigma2=1.0, rho=0.0)
    assert fixed.n_max == 1 and fixed.delta == 0.01
    t1 = stop_rule(variances, corr, list(range(6)), ScaleConfig(methods=["ties"], seeds=[0], stop_rule="theorem1",
                                                                  law_first_k=3), sigma2=1.0, rho=0.0)
    assert t1.search_k == [2]  # the searches' grid cut at max(2, 1)
    assert json.loads(json.dumps(t1.to_dict(), allow_nan=False))["delta"] is None  # plan.json stays strict JSON


def test_search_grid_covers_every_k():
    assert search_grid(10, None) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert search_grid(2, None) == [2]
    assert search_grid(6, [1, 3, 9]) == [3]


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


@pytest.mark.parametrize("kw,match", [
    ({"delta": 0.0}, "scale.delta"), ({"delta": -0.5}, "scale.delta"), ({"delta_fraction": 1.0}, "delta_fraction"),
    ({"delta_fraction": 0.0}, "delta_fraction"), ({"search_k": [1, 2]}, "search_k"),
])
def test_scale_config_refuses_bad_rule_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        ScaleConfig(methods=["ties"], **kw)


def test_scale_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="unknown merge method"):
        ScaleConfig(methods=["nope"])
    with pytest.raises(ConfigError, match="method_params.ties"):
        ScaleConfig(methods=["task_arithmetic"], method_params={"ties": {}})
    with pytest.raises(ConfigError, match="k_max"):
        ScaleConfig(methods=["ties"], k_min=3, k_max=2)
    # a law fitted on every k the run measures would predict nothing (and be labelled a prediction)
    for law_first_k, k_max in ((4, 4), (5, 4)):
        with pytest.raises(ConfigError, match=rf"`scale.law_first_k` \({law_first_k}\) must be below `scale.k_max` \(4\)"):
            ScaleConfig(methods=["ties"], law_first_k=law_first_k, k_max=k_max)
    assert ScaleConfig(methods=["ties"], law_first_k=3, k_max=4).k_max == 4


def test_correlated_pairs_from_domains_and_graceful_without():
    from evomerge.pipelines.scale.pairs import correlated_pairs

    names = ["a1", "a2", "b1", "c1", "b2"]
    domains = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "b2": "B"}
    p = correlated_pairs(names, domains, [("a1", "a2"), ("b1", "b2")])
    assert p["related"] == [[0, 1], [2, 4]]
    # the first member with the first expert of another domain that it is not yet paired with,
    # in either order (b1-a1 would repeat a1-b1)
    assert p["unrelated"] == [[0, 2], [2, 1]]
    from evomerge.zoo import ensure_zoo

    zoo = ensure_zoo("default")  # the shipped pool: five related pairs, five distinct unrelated ones
    domains = zoo.domains
    q = correlated_pairs(zoo.tasks, domains, zoo.related_pairs)
    assert len(q["related"]) == len(q["unrelated"]) == 5
    assert len({frozenset(u) for u in q["unrelated"]}) == 5
    assert all(domains[zoo.tasks[i]] != domains[zoo.tasks[j]] for i, j in q["unrelated"])
    none = correlated_pairs(names, None, None)
    assert none["related"] == [] and "no domains" in none["note"]


def test_fisher_regmean_need_a_train_split_per_expert(tmp_path):
    from evomerge.pipelines.scale.statistics import needed, train_files

    assert needed(["ties", "fisher", "regmean"]) == ["fisher", "gram"] and needed(["ties"]) == []
    for task in ("t1", "t2"):
        (tmp_path / "tasks" / task).mkdir(parents=True)
    (tmp_path / "tasks" / "t1" / "train.parquet").write_bytes(b"")
    assert train_files(["e1"], ["t1"], tmp_path, None) == [tmp_path / "tasks" / "t1" / "train.parquet"]
    with pytest.raises(ConfigError, match="expert `e2`"):
        train_files(["e1", "e2"], ["t1", "t2"], tmp_path, None)
    folder = tmp_path / "mine"
    folder.mkdir()
    with pytest.raises(ConfigError, match="expert `x`"):
        train_files(["x"], ["mine"], None, {"mine": str(folder)})
    (folder / "train.jsonl").write_text("")
    assert train_files(["x"], ["mine"], None, {"mine": str(folder)}) == [folder / "train.jsonl"]
    # the same file rule as evaluation's task folders: .json too, and two files of the split refused
    (folder / "train.jsonl").unlink()
    (folder / "train.json").write_text("[]")
    assert train_files(["x"], ["mine"], None, {"mine": str(folder)}) == [folder / "train.json"]
    (folder / "train.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"^evaluation\.task_files\.mine: .*mine: ambiguous train split: "
                                        r"this task folder holds train\.parquet and train\.json; keep one$"):
        train_files(["x"], ["mine"], None, {"mine": str(folder)})
