"""Your own experts' task files are checked before any work, the same way by ``evolve`` and
``scale`` (:func:`evomerge.pipelines.inputs.check_user_tasks`): one ``error:`` line naming the key
or the file, exit code 2, Ray never started, nothing written. ``evolve`` used to find a missing
task folder or a Parquet file without ``answer`` only in its actors, ~10 s after Ray's start, as
18 ``error:`` lines of an actor traceback."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from _cli_helpers import run_cli

RAY_STARTED = "Started a local Ray instance"
TASKS = ("rev_digits", "sort_digits", "brackets")


def _config(tmp_path, small_zoo, task_files, **extra):
    """The small zoo's experts (each with its ``task``) as a user's own pool, with ``task_files``."""
    experts = [{"path": str(small_zoo.expert_dirs[t]), "name": t, "task": t} for t in TASKS]
    data = {"experts": {"base": str(small_zoo.base_dir), "experts": experts},
            "evaluation": {"task_files": {t: str(p) for t, p in task_files.items()}, "max_samples": 8},
            "genome": {"population": 2, "generations": 1},
            "scale": {"methods": ["task_arithmetic"], "search": [], "seeds": [0]}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _zoo_tasks(small_zoo):
    return {t: small_zoo.root / "tasks" / t for t in TASKS}


def _refused(command, cfg, out, capsys):
    """``evomerge COMMAND``: exit 2, one ``error:`` line and no traceback, Ray not started, no ``out``."""
    import ray

    args = ["--algo", "genome"] if command == "evolve" else ["--no-progress"]
    code, stdout, err = run_cli([command, *args, "--config", cfg, "--out", out], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stdout + err, err[-3000:]
    assert RAY_STARTED not in stdout + err and not ray.is_initialized()
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("command", ["evolve", "scale"])
def test_a_missing_task_folder_is_named_before_ray(command, small_zoo, tmp_path, capsys):
    files = {**_zoo_tasks(small_zoo), "brackets": tmp_path / "nope"}
    line = _refused(command, _config(tmp_path, small_zoo, files), tmp_path / "run", capsys)
    assert line == f"error: evaluation.task_files.brackets: {tmp_path / 'nope'}: task file or folder not found"


@pytest.mark.parametrize("command", ["evolve", "scale"])
def test_a_parquet_file_without_answers_is_named_before_ray(command, small_zoo, tmp_path, capsys):
    bad = tmp_path / "brackets.parquet"
    pq.write_table(pa.table({"prompt": ["(()", "()"]}), bad)
    files = {**_zoo_tasks(small_zoo), "brackets": bad}
    line = _refused(command, _config(tmp_path, small_zoo, files), tmp_path / "run", capsys)
    assert line == f"error: {bad}: missing column(s) ['answer']; a task file needs ['prompt', 'answer']"


@pytest.mark.parametrize("command", ["evolve", "scale"])
def test_a_row_the_tokenizer_cannot_encode_is_named_before_ray(command, small_zoo, tmp_path, capsys):
    """A character outside the base tokenizer's vocabulary: refused naming the file and its line
    before Ray starts (it failed inside the actors / workers)."""
    bad = tmp_path / "brackets.jsonl"
    bad.write_text('{"prompt": "(()", "answer": ")"}\n{"prompt": "(\u20ac", "answer": ")"}\n')
    files = {**_zoo_tasks(small_zoo), "brackets": bad}
    line = _refused(command, _config(tmp_path, small_zoo, files), tmp_path / "run", capsys)
    assert line.startswith(f"error: {bad} (task `brackets`): line 2: the prompt holds characters outside the tokenizer"), line


def test_a_task_folder_without_validation_is_named_before_ray(small_zoo, tmp_path, capsys):
    """evolve's objective is validation: a folder with only a train split is refused, naming the key."""
    folder = tmp_path / "brackets"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "(", "answer": ")"}\n')
    files = {**_zoo_tasks(small_zoo), "brackets": folder}
    line = _refused("evolve", _config(tmp_path, small_zoo, files), tmp_path / "run", capsys)
    assert "evaluation.task_files.brackets" in line and "no validation.parquet, validation.jsonl or validation.json in this task folder" in line


def test_evolve_checks_only_the_tasks_it_evaluates(small_zoo, tmp_path):
    """``evaluation.tasks`` picks the tasks: a broken file of another task is not read (nor by the
    actors); an unknown task in it is refused before Ray, as the actors' inputs would."""
    from evomerge.config import load_config
    from evomerge.errors import ConfigError
    from evomerge.pipelines.evolve.run import check_experts

    files = {**_zoo_tasks(small_zoo), "brackets": tmp_path / "nope"}
    cfg = load_config(_config(tmp_path, small_zoo, files, **{"evaluation": {
        "task_files": {t: str(p) for t, p in files.items()}, "tasks": ["rev_digits", "sort_digits"]}}))
    check_experts(cfg)
    with pytest.raises(ConfigError, match=r"`evaluation.tasks`: unknown task\(s\) \['nope'\]"):
        check_experts(cfg, ["rev_digits", "nope"])


@pytest.mark.parametrize("command", ["evolve", "scale"])
def test_an_expert_whose_task_has_no_task_file_is_refused(command, small_zoo, tmp_path, capsys):
    """``brackets`` names its task, which ``evaluation.task_files`` lacks: both commands used to run
    (exit 0) without it (scale: its gain n/a, yet ranked in the order; evolve: 2 of 3 tasks)."""
    files = {t: p for t, p in _zoo_tasks(small_zoo).items() if t != "brackets"}
    line = _refused(command, _config(tmp_path, small_zoo, files), tmp_path / "run", capsys)
    assert line == ("error: `experts.experts[2]` (brackets): its task `brackets` has no "
                    "`evaluation.task_files.brackets` (the task files: rev_digits, sort_digits); "
                    "give that task's file or folder")


def test_what_needs_no_task_file_of_its_own(small_zoo, tmp_path):
    """Refused only where an expert names a task no file serves: an expert without ``task``, a
    subset in ``evaluation.tasks`` without an expert's task, and the built-in zoo all pass."""
    from evomerge.config import load_config
    from evomerge.errors import ConfigError
    from evomerge.pipelines.inputs import check_user_tasks

    files = {t: str(p) for t, p in _zoo_tasks(small_zoo).items()}
    no_task = [{"path": str(small_zoo.expert_dirs[t]), "name": t} for t in TASKS]
    check_user_tasks(load_config(_config(tmp_path, small_zoo, {}, experts={
        "base": str(small_zoo.base_dir), "experts": no_task}, evaluation={"task_files": {"rev_digits": files["rev_digits"]}})))
    check_user_tasks(load_config(_config(tmp_path, small_zoo, _zoo_tasks(small_zoo), evaluation={
        "task_files": files, "tasks": ["rev_digits"]})))
    check_user_tasks(load_config(None))  # the built-in zoo
    with pytest.raises(ConfigError, match=r"^`experts.experts\[1\]` \(sort_digits\): its task `sort_digits` has no"):
        check_user_tasks(load_config(_config(tmp_path, small_zoo, {}, evaluation={
            "task_files": {"rev_digits": files["rev_digits"], "brackets": files["brackets"]}, "tasks": ["rev_digits"]})))
