"""``evomerge scale`` on the ``--out`` of a finished run reuses its cells only when the input
files are the ones it read (``plan.json``'s ``inputs``: sha256 of the base, each expert and each
task file). An expert's weights scaled in place used to give ``0 cells run, 6 already done``: the
report mixed the old scores with the new pool's statistics. One real run over a copied pool of
the small zoo's experts; each test changes a file and puts it back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from _cli_helpers import run_cli

pytestmark = pytest.mark.ray  # the fixture's run scores its cells on Ray actors

TASKS = ("rev_digits", "sort_digits", "brackets", "majority")
RAY_STARTED = "Started a local Ray instance"


@pytest.fixture(scope="module")
def run(small_zoo, tmp_path_factory):
    """A finished run (task arithmetic only) over copies of 4 experts and their task folders."""
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale

    root = tmp_path_factory.mktemp("stale")
    for t in TASKS:
        shutil.copytree(small_zoo.expert_dirs[t], root / "pool" / t)
        shutil.copytree(small_zoo.root / "tasks" / t, root / "tasks" / t)
    data = {"experts": {"base": str(small_zoo.base_dir),
                        "experts": [{"path": str(root / "pool" / t), "name": t, "task": t} for t in TASKS]},
            "evaluation": {"task_files": {t: str(root / "tasks" / t) for t in TASKS}, "max_samples": 8},
            "scale": {"methods": ["task_arithmetic"], "search": [], "seeds": [0], "law_first_k": 3,
                      "with_rht": False, "order": "given"},
            "ray": {"num_actors": 1}}
    cfg = root / "scale.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = root / "run"
    run_scale(load_config(cfg), out, progress=False, analyze=False, report=False)
    return root, cfg, out


@pytest.fixture
def changed(run):
    """``change(path)``: multiply a float of ``path``'s tensors / rewrite a task file; put back after."""
    saved = {}

    def change(path):
        saved[path] = path.read_bytes()
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(path))
            save_file({k: 2 * v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            pq.write_table(table.slice(1), path)  # the first row dropped
        return path

    yield change
    for path, data in saved.items():
        path.write_bytes(data)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rerun_refused(cfg, out, capsys):
    import ray

    before = _snapshot(out)
    code, stdout, err = run_cli(["scale", "--config", cfg, "--out", out, "--no-progress"], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stdout + err, err[-3000:]
    assert RAY_STARTED not in stdout + err and not ray.is_initialized()
    assert _snapshot(out) == before  # nothing of the run is touched
    return lines[0]


def test_the_plan_records_the_inputs_and_the_same_inputs_resume(run):
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale

    root, cfg, out = run
    inputs = json.loads((out / "plan.json").read_text())["inputs"]
    assert sorted(inputs) == ["base", "experts", "tasks"]
    assert sorted(inputs["experts"]) == sorted(TASKS) == sorted(inputs["tasks"])
    assert len(set(inputs["experts"].values())) == len(TASKS)
    res = run_scale(load_config(cfg), out, progress=False, analyze=False, report=False)
    assert res.cells_run == 0 and res.cells_skipped == res.cells_total > 0


def test_an_expert_changed_in_place_is_refused(run, changed, capsys):
    root, cfg, out = run
    changed(root / "pool" / "sort_digits" / "adapter_model.safetensors")
    line = _rerun_refused(cfg, out, capsys)
    assert line == (f"error: {out}: the earlier run read other input files (expert `sort_digits` changed since: "
                    "sha256 differs from plan.json); its finished cells would be mixed with the new ones: pass "
                    "--overwrite to replace it, or use another --out")


def test_a_task_file_changed_in_place_is_refused(run, changed, capsys):
    root, cfg, out = run
    changed(root / "tasks" / "brackets" / "validation.parquet")
    line = _rerun_refused(cfg, out, capsys)
    assert "task file `brackets` changed" in line and "--overwrite" in line


def test_a_run_from_before_the_fingerprint_still_resumes(run, changed):
    """No ``inputs`` in plan.json: nothing to compare; the resumed run records them."""
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale

    root, cfg, out = run
    plan_path = out / "plan.json"
    plan = json.loads(plan_path.read_text())
    try:
        plan_path.write_text(json.dumps({k: v for k, v in plan.items() if k != "inputs"}))
        changed(root / "pool" / "majority" / "adapter_model.safetensors")
        res = run_scale(load_config(cfg), out, progress=False, analyze=False, report=False)
        assert res.cells_run == 0
        now = json.loads(plan_path.read_text())["inputs"]
        assert now["experts"]["majority"] != plan["inputs"]["experts"]["majority"]
        assert {k: v for k, v in now["experts"].items() if k != "majority"} == \
               {k: v for k, v in plan["inputs"]["experts"].items() if k != "majority"}
    finally:
        plan_path.write_text(json.dumps(plan))


def test_the_zoo_fingerprint_is_the_content_of_its_files(small_zoo, tmp_path):
    """A zoo's fingerprint comes from its manifest once every file is checked against it: each
    expert's equals a digest computed here from the files' bytes (hashlib, not evomerge's
    hashing), the experts differ; a copy of the zoo whose expert file changed in place (the
    manifest left as it was) is refused, naming the file, instead of keeping its fingerprint."""
    import hashlib

    from evomerge.config import load_config
    from evomerge.errors import ExpertLoadError
    from evomerge.pipelines import fingerprint
    from evomerge.pipelines.scale.driver import pool_spec
    from evomerge.zoo import Zoo

    def by_hand(folder):
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = f.relative_to(small_zoo.root).as_posix()
            h.update(f"{rel}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
        return h.hexdigest()

    spec = pool_spec(load_config(None), small_zoo)
    got = fingerprint.input_fingerprint(spec, {})
    assert sorted(got["experts"]) == sorted(small_zoo.tasks) == sorted(got["tasks"])
    assert got["experts"] == {t: by_hand(small_zoo.expert_dirs[t]) for t in small_zoo.tasks}
    assert got["base"] == by_hand(small_zoo.base_dir)
    assert len(set(got["experts"].values())) == len(small_zoo.tasks)
    copy = Path(shutil.copytree(small_zoo.root, tmp_path / "zoo"))
    spec_copy = pool_spec(load_config(None), Zoo.open(copy))  # a zoo given as a folder: opened unverified
    assert fingerprint.input_fingerprint(spec_copy, {})["experts"] == got["experts"]
    weights = next((copy / "experts" / "brackets").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ExpertLoadError, match="brackets"):
        fingerprint.input_fingerprint(spec_copy, {})


def test_the_fingerprint_reads_what_the_loaders_read(tmp_path):
    """A folder's files are hashed, its subfolders (a trainer's checkpoint-*/) are not: a change
    there does not block a resume, a change of a file the loader reads does; for a folder without
    subfolders the hash is the recursive one (merge's manifest and earlier plans agree)."""
    from evomerge.io import sha256_tree

    folder = tmp_path / "expert"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_config.json").write_text("{}")
    flat = sha256_tree(folder, recursive=False)
    assert flat == sha256_tree(folder)
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"x" * 1000)
    assert sha256_tree(folder, recursive=False) == flat != sha256_tree(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"other weights")
    assert sha256_tree(folder, recursive=False) != flat
    # the run's fingerprint of that expert: the files directly in the folder
    from evomerge.pipelines.scale.driver import PoolSpec
    from evomerge.pipelines.fingerprint import input_fingerprint

    spec = PoolSpec(paths=[folder], names=["e"], tasks=[None], base_dir=None, zoo_root=None)
    before = input_fingerprint(spec, {})
    (folder / "checkpoint-500" / "optimizer.pt").write_bytes(b"y" * 1000)
    assert input_fingerprint(spec, {}) == before == {"base": None, "experts": {"e": sha256_tree(folder, recursive=False)},
                                                     "tasks": {}}


def test_a_run_stopped_before_its_plan_starts_again(run, tmp_path):
    """Interrupted before ``plan.json`` (no cell finished), a run left its config, the experts'
    own scores and the pool analysis, made from the files as they were then and not recorded:
    the resume used them unchecked. It now starts again, as a fresh run."""
    from evomerge.config import load_config
    from evomerge.pipelines.scale.driver import run_scale
    from evomerge.pipelines.scale.gains import FILE

    root, cfg, out = run
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(out / "config.yaml", cut / "config.yaml")
    measured = json.loads((out / FILE).read_text())
    stale = json.loads(json.dumps(measured))
    stale["gain"] = {name: 0.5 for name in stale["gain"]}  # scores of files that have changed since
    (cut / FILE).write_text(json.dumps(stale))
    (cut / "analysis").mkdir()
    (cut / "analysis" / "summary.json").write_text("{}")
    res = run_scale(load_config(cfg), cut, progress=False, analyze=False, report=False)
    assert res.cells_run == res.cells_total > 0
    assert json.loads((cut / FILE).read_text()) == measured
    assert not (cut / "analysis").exists() and "inputs" in json.loads((cut / "plan.json").read_text())
