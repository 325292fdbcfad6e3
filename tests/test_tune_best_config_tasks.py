"""tune's best config writes the experts as the user gave them: an expert without ``task`` stays
without one (the run's spec names its task after the expert, a task the pool's task files may
not have, which evolve and scale refuse); one with a task keeps it; the zoo's experts name
their tasks."""

from __future__ import annotations

from evomerge.config import config_from_dict
from evomerge.pipelines.scale.driver import pool_spec
from evomerge.pipelines.tune.run import best_config


def test_best_config_keeps_the_users_tasks(small_zoo) -> None:
    d = small_zoo.expert_dirs
    base = config_from_dict({"experts": {"base": str(small_zoo.base_dir), "experts": [
        {"path": str(d["brackets"]), "name": "b"},
        {"path": str(d["majority"]), "name": "m", "task": "majority"}]}})
    spec = pool_spec(base)
    assert spec.tasks == ["b", "majority"]  # what the run names them
    out = best_config(base, {}, spec)
    assert [(e.name, e.task) for e in out.experts.experts] == [("b", None), ("m", "majority")]


def test_best_config_of_a_zoo_merge_study_names_the_zoos_tasks(small_zoo) -> None:
    base = config_from_dict({"tune": {"objective": "merge"}})
    spec = pool_spec(base, small_zoo)
    out = best_config(base, {}, spec)
    assert [e.task for e in out.experts.experts] == list(small_zoo.tasks)


def test_best_config_drops_data_the_chosen_method_does_not_read(small_zoo, tmp_path) -> None:
    """A study over [fisher, ties] with merge.data: a best TIES config keeps no data (merge refuses
    data for a method that reads none); a best Fisher config keeps it."""
    d = small_zoo.expert_dirs
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1", "answer": "1"}\n')
    base = config_from_dict({"experts": {"base": str(small_zoo.base_dir), "experts": [str(d["brackets"]), str(d["majority"])]},
                             "merge": {"method": "fisher", "data": [str(data)]}})
    spec = pool_spec(base)
    assert best_config(base, {"merge.method": "ties"}, spec).merge.data == []
    assert [str(p) for p in best_config(base, {"merge.method": "fisher"}, spec).merge.data] == [str(data)]
