"""A refused ``tune.space`` dimension: named with where it was set (the config file or ``--set``, as
a refused value of the config itself is), and refused before anything is written: no ``--out``
folder, no ``optuna.db``, and an existing ``--out`` left byte for byte as it was (real CLI runs on
the small zoo, real SQLite storage)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _cli_helpers import one_error

SPACE = {"seed": 0, "merge": {"method": "ties"}, "evaluation": {"max_samples": 8},
         "tune": {"objective": "merge", "n_trials": 1, "sampler": "random",
                  "space": {"merge.params.density": {"low": 0.2, "high": 1.0}}}}


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch):
    monkeypatch.delenv("EVOMERGE_OPTUNA_STORAGE", raising=False)


def _config(tmp_path: Path, data=SPACE) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unknown_merge_method_names_the_dimension_and_set(tmp_path, small_zoo, capsys) -> None:
    line = one_error(["tune", "--config", _config(tmp_path), "--small", "--out", tmp_path / "run",
                      "--set", "tune.space.merge.method={type: categorical, choices: [ties, foo]}"], capsys)
    # was: "error: unknown merge method `foo`; available: ..." (neither the key nor --set)
    assert line.startswith("error: --set: tune.space.`merge.method`: unknown merge method `foo`; available: "), line
    assert not (tmp_path / "run").exists()


def test_a_dimension_of_the_file_names_the_file(tmp_path, small_zoo, capsys) -> None:
    data = {**SPACE, "tune": {**SPACE["tune"], "space": {"merge.method": {"type": "categorical",
                                                                           "choices": ["ties", "foo"]}}}}
    path = _config(tmp_path, data)
    line = one_error(["tune", "--config", path, "--small", "--out", tmp_path / "run"], capsys)
    assert line.startswith(f"error: {path}: tune.space.`merge.method`: unknown merge method `foo`"), line
    # other refused dimensions name their source too
    line = one_error(["tune", "--config", path, "--small", "--out", tmp_path / "run", "--set",
                      "tune.space.merge.method={type: categorical, choices: [ties]}", "--set",
                      "tune.space.merge.params.density={low: 0.2, high: 9}"], capsys)
    assert line.startswith("error: --set: tune.space.`merge.params.density` (method `ties`): `density` must be in"), line


def test_an_expert_count_above_the_pool_leaves_no_folder(tmp_path, small_zoo, capsys) -> None:
    out = tmp_path / "run"
    line = one_error(["tune", "--config", _config(tmp_path), "--small", "--out", out,
                      "--set", "tune.space.experts.count={type: int, low: 2, high: 99}"], capsys)
    assert line == ("error: --set: tune.space.`experts.count`: `high`=99 but the expert pool has only "
                    f"{len(small_zoo.tasks)} experts"), line
    assert not out.exists()  # was: out/optuna.db (an SQLite file holding no study)


def test_an_expert_count_above_the_pool_leaves_an_existing_study_as_it_was(tmp_path, small_zoo, capsys) -> None:
    from evomerge.config import load_config
    from evomerge.pipelines.tune.run import create_or_check_study

    out = tmp_path / "run"
    create_or_check_study(load_config(_config(tmp_path)), out, small=True)  # the study, no trial
    before = _snapshot(out)
    assert "optuna.db" in before
    one_error(["tune", "--config", _config(tmp_path), "--small", "--out", out, "--resume",
               "--set", "tune.space.experts.count={type: int, low: 2, high: 99}"], capsys)
    assert _snapshot(out) == before
