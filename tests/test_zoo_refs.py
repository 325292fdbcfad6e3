"""``zoo:<profile>/<path>`` in a config: a built-in zoo's file named where any machine finds it.

A tune job's ``best_config.yaml`` listed the zoo's experts by the path of the job's own copy of
evomerge (inside Ray's temporary package folder); once that session was gone, ``evomerge merge
--config best_config.yaml`` failed with "expert not found"."""

from __future__ import annotations

import shutil

import pytest

from evomerge.config import config_from_dict, dump_config, load_config
from evomerge.errors import ConfigError
from evomerge.zoo import zoo as zoo_module
from evomerge.zoo.refs import resolve_zoo_ref, with_zoo_refs, zoo_ref


def test_a_reference_resolves_to_the_zoo_in_use_and_back(small_zoo):
    root = zoo_module.zoo_root_in_use("small")
    assert resolve_zoo_ref("zoo:small/experts/brackets") == root / "experts" / "brackets"
    assert zoo_ref(root / "experts" / "brackets") == "zoo:small/experts/brackets"
    assert zoo_ref(root) is None  # the folder itself is no file of the zoo
    assert resolve_zoo_ref("/abs/path") == "/abs/path" and resolve_zoo_ref(3) == 3
    assert zoo_ref("/tmp") is None


@pytest.mark.parametrize("value, words", [
    ("zoo:big/base", "unknown zoo profile 'big'"),
    ("zoo:small/../secret", "without `..`"),
    ("zoo:small", "needs a path inside the zoo"),
    ("zoo:small//etc/passwd", "needs a path inside the zoo"),
])
def test_a_bad_reference_names_the_key_and_the_value(value, words):
    with pytest.raises(ConfigError, match=r"`experts\.experts\.0\.path`") as err:
        config_from_dict({"experts": {"experts": [value]}})
    assert words in str(err.value) and f"Got {value!r} instead." in str(err.value)
    assert "Value error" not in str(err.value)


def test_a_config_written_with_references_loads_on_a_machine_whose_zoo_lies_elsewhere(small_zoo, tmp_path,
                                                                                       monkeypatch):
    """Written where evomerge (and its shipped zoo) is a job's temporary copy; loaded where it is
    installed: the references follow the zoo, the user's own paths stay as they are."""
    copy = tmp_path / "ray_pkg" / "evomerge" / "zoo" / "shipped"
    shutil.copytree(zoo_module.SHIPPED / "small", copy / "small")
    own = tmp_path / "my_adapter"
    with monkeypatch.context() as m:
        m.setattr(zoo_module, "SHIPPED", copy)
        cfg = config_from_dict({"experts": {"base": str(copy / "small" / "base"),
                                            "experts": [str(copy / "small" / "experts" / "majority"), str(own)]},
                                "evaluation": {"task_files": {"majority": str(copy / "small" / "tasks" / "majority"),
                                                              "mine": str(own / "task.jsonl")}}})
        dump_config(cfg, tmp_path / "best.yaml", zoo_refs=True)
    shutil.rmtree(tmp_path / "ray_pkg")  # the job's session is over
    text = (tmp_path / "best.yaml").read_text()
    assert "ray_pkg" not in text and "zoo:small/base" in text and "zoo:small/experts/majority" in text
    assert "zoo:small/tasks/majority" in text  # a tune study's best config names the zoo's tasks too
    loaded = load_config(tmp_path / "best.yaml")
    assert loaded.experts.base == small_zoo.base_dir
    assert [s.path for s in loaded.experts.experts] == [small_zoo.expert_dirs["majority"], own]
    assert loaded.evaluation.task_files == {"majority": small_zoo.root / "tasks" / "majority", "mine": own / "task.jsonl"}
    assert (loaded.evaluation.task_files["majority"] / "validation.parquet").is_file() or \
        any(loaded.evaluation.task_files["majority"].iterdir())


def test_without_references_a_dump_keeps_the_paths(small_zoo, tmp_path):
    cfg = config_from_dict({"experts": {"base": str(small_zoo.base_dir)}})
    assert with_zoo_refs(cfg.model_dump(mode="json"))["experts"]["base"] == "zoo:small/base"
    dump_config(cfg, tmp_path / "c.yaml")
    assert str(small_zoo.base_dir) in (tmp_path / "c.yaml").read_text()
