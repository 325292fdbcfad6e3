"""``benchmarks/model_scale.py`` at its tiny size on CPU: its figures agree with counts made
independently here (history files, the safetensors files it wrote, its own timers). And the
fix it led to: LoRA candidates are evaluated from their factors, never densified per candidate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# the benchmark tests start Ray and four sets of actors (slow: minutes on a loaded 2-core machine)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
N, POP = 3, 4
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("ray")
    sys.path.insert(0, str(BENCH))
    import model_scale

    wd = tmp_path_factory.mktemp("model_scale")
    res = model_scale.main(["--size", "tiny", "--experts", str(N), "--population", str(POP), "--samples", "8",
                            "--naive", "1", "--workdir", str(wd), "--json", str(wd / "result.json")])
    return res, wd


def _phase(res, name):
    return next(p for p in res["phases"] if p["phase"] == name)


def _tensor_bytes(path: Path, keep=lambda k: True) -> tuple[int, int]:
    """(bytes, elements) of the tensors in a safetensors file whose names pass ``keep``."""
    from safetensors import safe_open

    nbytes = numel = 0
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            if keep(k):
                t = f.get_tensor(k)
                nbytes += t.numel() * t.element_size()
                numel += t.numel()
    return nbytes, numel


@pytest.mark.ray
@pytest.mark.slow
def test_json_written_equals_returned(run):
    res, wd = run
    assert json.loads((wd / "result.json").read_text())["phases"][0]["evaluations"] == res["phases"][0]["evaluations"]


@pytest.mark.ray
@pytest.mark.slow
def test_shares_fit_the_wall_time(run):
    res, _ = run
    for p in res["phases"]:
        if "shares" not in p:
            continue
        rows = [p] + p.get("rounds", [])
        for r in rows:
            sh = r["shares"]
            assert sum(sh.values()) == pytest.approx(1.0)
            measured = {k: v for k, v in sh.items() if k != "other"}
            assert all(v >= 0 for v in measured.values()), (p["phase"], sh)
            assert sh["other"] >= -0.02, (p["phase"], sh)  # what was timed inside fits in the wall time
            assert 0.0 <= r["outside_eval"] <= 1.0
        for r in p.get("rounds", []):
            # the evaluator's own clock and the actor's clock around it agree
            assert r["evaluator_calls_s"] <= r["evaluate_s"] * 1.02 + 1e-3
            assert r["evaluator_calls_s"] >= 0.8 * r["evaluate_s"]
            assert r["swap_s"] + r["forward_s"] + r["metrics_s"] <= r["evaluator_calls_s"] * 1.02 + 1e-3


@pytest.mark.ray
@pytest.mark.slow
def test_evaluations_counted_as_the_history_and_the_evaluator_saw_them(run):
    import pyarrow.parquet as pq

    res, wd = run
    for algo in ("genome", "swarm"):
        p = _phase(res, algo)
        hist = pq.read_table(wd / f"run_{algo}" / "history.parquet").to_pandas()
        per_step = hist.groupby("step").size().to_dict()
        assert {r["step"]: r["evaluations"] for r in p["rounds"]} == per_step
        assert all(r["evaluated_by_actors"] == r["evaluations"] for r in p["rounds"])
        assert p["evaluations"] == len(hist)
        assert p["evals_per_s"] == pytest.approx(len(hist) / sum(r["wall_s"] for r in p["rounds"]))
    assert len(_phase(res, "genome")["rounds"]) == 2  # the initial population and one generation
    cell = _phase(res, "cell")
    assert cell["evaluations"] == cell["evaluated_by_actor"] == 2  # validation and test
    assert res["naive"]["candidates"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_memory_bound_is_the_issue_formula_on_the_written_files(run):
    res, wd = run
    base, _ = _tensor_bytes(wd / "base" / "model.safetensors")
    expert, _ = _tensor_bytes(wd / "experts" / "expert0" / "adapter_model.safetensors")  # fp32 A and B
    for p in res["phases"]:
        assert p["bound"] == base + (N + POP) * expert
        assert p["host_peak"] >= res["idle_actor_rss"] + base  # the actor holds at least the base
        assert p["eval_dtype"] == "float32" and p["device_peak"] == 0
    for algo in ("genome", "swarm"):
        peaks = [m["rss_peak"] for r in _phase(res, algo)["rounds"] for m in r["memory"]]
        assert peaks == sorted(peaks)  # a peak never goes down


@pytest.mark.ray
@pytest.mark.slow
def test_object_store_traffic(run):
    res, wd = run
    if res["space"] == "ab":  # an individual is an A/B dict like an expert's adapter (fp32)
        size, _ = _tensor_bytes(wd / "experts" / "expert0" / "adapter_model.safetensors")
    else:  # a dense fp32 delta of every adapted weight
        size = 4 * _tensor_bytes(wd / "base" / "model.safetensors", lambda k: k.split(".")[-2] in TARGETS)[1]
    assert res["individual_bytes"] == size
    for algo in ("genome", "swarm"):
        rounds = _phase(res, algo)["rounds"]
        assert all(r["traffic"]["cross_actor_bytes"] == 0 for r in rounds)  # one actor: nothing crosses
        for r in rounds:  # whole individuals (or velocities of the same shape) only
            assert r["traffic"]["driver_fetch_bytes"] % size == 0
        assert rounds[0]["traffic"]["driver_fetch_bytes"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_peak_breakdown_counts_the_individuals_the_actor_held(run):
    """The sampled own peak is broken down: heap and mapped files above the idle actor, and the
    individuals whose weights the actor held then (each an A/B dict the size of an expert's
    adapter file in "ab" space); GENOME's initial pairs and sums are held as recipes."""
    res, wd = run
    size, _ = _tensor_bytes(wd / "experts" / "expert0" / "adapter_model.safetensors")
    for algo in ("genome", "swarm"):
        p = _phase(res, algo)
        at = p["at_own_peak"]
        assert at["anon_extra"] + at["file_extra"] == p["own_peak_extra"]
        if res["space"] == "ab":
            assert at["individual_bytes"] == at["individuals"] * size
    mem = _phase(res, "genome")["rounds"][0]["memory"][0]  # after the initial round
    assert mem["lazy_entries"] > 0 and mem["store_entries"] + mem["lazy_entries"] > N


@pytest.mark.ray
@pytest.mark.slow
def test_merge_inputs_and_naive_scores(run):
    res, wd = run
    _, linear = _tensor_bytes(wd / "base" / "model.safetensors", lambda k: k.split(".")[-2] in TARGETS)
    m = _phase(res, "merge")["detail"]
    assert m["input_bytes"] == N * linear * 4 and m["merged_bytes"] == linear * 4
    assert all(m[f"{k}_s"] > 0 and m[f"peft_{k}_s"] > 0 for k in ("task_arithmetic", "ties", "dare_ties"))
    assert res["naive"]["max_score_diff"] < 1e-6


def test_lora_candidates_stay_factors_and_score_as_their_dense_deltas(small_zoo, zoo_experts):
    """Stacked (several candidates per pass) and one by one, LoRA candidates give the scores of
    the same deltas given densely, while what the evaluator holds per candidate is r x (in + out)."""
    import torch

    from evomerge.evaluation import Evaluator
    from evomerge.evaluation.candidates import LowRank, to_deltas
    from evomerge.experts.types import lora_deltas

    ev = Evaluator.from_zoo(small_zoo, max_samples=24, max_rows=4096)
    loras = list(zoo_experts.values())[:3]
    d = to_deltas(loras[0], ev.params)
    assert all(isinstance(v, LowRank) for v in d.values())
    for key, v in d.items():
        m = loras[0][key]
        assert v.A.numel() + v.B.numel() == m.rank * (m.A.shape[1] + m.B.shape[0])
        assert torch.allclose(v.dense(), m.delta(torch.float32), atol=1e-7)
    dense = [lora_deltas(m, torch.float32) for m in loras]
    for many in (True, False):
        got = ev.evaluate_many(loras) if many else [ev.evaluate(m) for m in loras]
        want = ev.evaluate_many(dense)
        for g, w in zip(got, want):
            for t in ev.tasks:
                gm, wm = g.extra["metrics"][t], w.extra["metrics"][t]
                assert gm["token_accuracy"] == pytest.approx(wm["token_accuracy"], abs=1e-9)
                assert gm["cross_entropy"] == pytest.approx(wm["cross_entropy"], rel=1e-5)
