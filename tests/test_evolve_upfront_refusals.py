"""``evomerge evolve`` refuses, before Ray starts (2.5-5.5 s here) and with exit code 2, an
``--out`` it cannot write (docs/cli.md: "Before any work"), the config's own experts that the
pool loader refuses (a missing folder, no base), a ``--resume`` over a ``run.json`` that is no
run's record; and a bad ``init_merges`` entry is refused with a message that matches what is
accepted, blaming where that key was set. No test here starts Ray (each checks that it did not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from _cli_helpers import run_cli

RAY_STARTED = "Started a local Ray instance"


def _refused_early(args, capsys, *words):
    """Exit 2, one ``error:`` line holding ``words``, Ray not started (no wall-time bound: the first
    call in a process pays the imports, and speed lives in benchmarks/)."""
    import ray

    code, out, err = run_cli(["evolve", *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1, err[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    assert RAY_STARTED not in out + err and not ray.is_initialized()
    return lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("out", ["/proc/evo", "/sys/evo"])
def test_unwritable_out_is_refused_before_ray(capsys, out):
    _refused_early(["--algo", "genome", "--small", "--out", out, "--actors", "1"], capsys, out, "cannot write here")
    assert not Path(out).exists()


def test_unwritable_out_is_refused_on_resume_too(tmp_path, capsys, monkeypatch):
    """A resume writes into the run's folder: that folder is probed (root writes anywhere, so the
    probe is made to fail the way a read-only file system fails it)."""
    import evomerge.io as io

    run = tmp_path / "run"
    run.mkdir()
    cfg = {"genome": {"population": 2}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    from evomerge.cli._common import load_config_with_sets
    from evomerge.pipelines.evolve.run import _run_meta

    meta = _run_meta(load_config_with_sets(tmp_path / "cfg.yaml", []), "genome", None, "small")
    (run / "run.json").write_text(json.dumps(meta))
    real = io.tempfile.mkdtemp

    def mkdtemp(*a, dir=None, **k):
        if Path(dir) == run:
            raise OSError(30, "Read-only file system", str(run))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(io.tempfile, "mkdtemp", mkdtemp)
    _refused_early(["--algo", "genome", "--small", "--config", tmp_path / "cfg.yaml", "--out", run, "--resume"],
                   capsys, str(run), "cannot write here", "Read-only file system")


def _experts_cfg(tmp_path, small_zoo, experts, base=True):
    data = {"experts": {"experts": [str(e) for e in experts]}, "genome": {"population": 2}}
    if base:
        data["experts"]["base"] = str(small_zoo.base_dir)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_missing_expert_is_refused_before_ray(tmp_path, capsys, small_zoo):
    nope = tmp_path / "nope"
    cfg = _experts_cfg(tmp_path, small_zoo, [small_zoo.expert_dirs["rev_digits"], nope])
    _refused_early(["--algo", "genome", "--config", cfg, "--out", tmp_path / "run"], capsys, f"{nope}: expert not found")
    assert not (tmp_path / "run").exists()


def test_expert_that_is_no_adapter_is_refused_before_ray(tmp_path, capsys, small_zoo):
    """The pool loader's header checks (here: a folder that is neither an adapter nor a checkpoint)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not an expert")
    cfg = _experts_cfg(tmp_path, small_zoo, [small_zoo.expert_dirs["rev_digits"], notes])
    _refused_early(["--algo", "genome", "--config", cfg, "--out", tmp_path / "run"], capsys,
                   str(notes), "neither a peft adapter")


def test_experts_without_base_are_refused_before_ray(tmp_path, capsys, small_zoo):
    cfg = _experts_cfg(tmp_path, small_zoo, [small_zoo.expert_dirs["rev_digits"], small_zoo.expert_dirs["sort_digits"]],
                       base=False)
    _refused_early(["--algo", "swarm", "--config", cfg, "--out", tmp_path / "run"], capsys, "`experts.base`")


@pytest.mark.parametrize("content", ["{", "[1, 2]", "{\"seed\": 3}"])
def test_resume_over_a_damaged_run_json_is_refused(tmp_path, capsys, content):
    """A ``run.json`` that is not JSON, or not a run's record: one error line, no traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(content)
    _refused_early(["--algo", "genome", "--small", "--out", run, "--resume"], capsys,
                   f"{run / 'run.json'}: cannot resume", "evolve run record")
    assert (run / "run.json").read_text() == content


def test_resume_with_another_zoo_is_refused_before_ray(tmp_path, capsys):
    """A run on the small zoo resumed with ``--zoo default``: its record names the zoo, so the
    refusal comes before Ray starts (it came once the actors had loaded the other zoo's experts)."""
    from evomerge.config import load_config
    from evomerge.pipelines.evolve.run import _run_meta

    run = tmp_path / "run"
    run.mkdir()
    record = json.dumps(_run_meta(load_config(None), "genome", None, "small"))
    (run / "run.json").write_text(record)
    line = _refused_early(["--algo", "genome", "--zoo", "default", "--out", run, "--resume"], capsys,
                          f"{run / 'run.json'}: cannot resume", "`zoo` differs", "'small' there, 'default' now")
    assert (run / "run.json").read_text() == record, line


def test_a_record_from_before_the_zoo_was_recorded_still_resumes(tmp_path):
    """Records written before ``zoo`` was: no zoo to compare (their experts are compared once
    resolved, as before); the same record with its zoo passes, another zoo is refused."""
    from evomerge.config import load_config
    from evomerge.errors import ConfigError
    from evomerge.pipelines.evolve import run as evolve_run

    cfg = load_config(None)
    now = evolve_run._run_meta(cfg, "genome", None, "small")
    assert now["zoo"] == "small"
    old = {k: v for k, v in now.items() if k != "zoo"}
    for i, (record, ok) in enumerate(((old, True), (now, True), ({**now, "zoo": "default"}, False))):
        tmp = tmp_path / f"run{i}"
        tmp.mkdir()
        (tmp / "run.json").write_text(json.dumps(record))
        if ok:
            evolve_run._check_out(tmp, now, resume=True)
        else:
            with pytest.raises(ConfigError, match="`zoo` differs"):
                evolve_run._check_out(tmp, now, resume=True)


@pytest.mark.parametrize("name", ["bar", "linear", "blx"])
@pytest.mark.parametrize("generations", [None, "2"])
def test_bad_init_merges_entry_names_what_is_accepted_and_its_source(tmp_path, capsys, name, generations):
    """The accepted set is the merge registry's (a `linear` start would be a sum: `init_sums`),
    and the message names that set, not one that lists `linear`; the file that set the key is
    blamed, not ``--generations`` (which set another key of the section)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"swarm": {"init_merges": [name]}}))
    args = ["--algo", "swarm", "--small", "--config", cfg, "--out", tmp_path / "run"]
    if generations:
        args += ["--generations", generations]
    line = _refused_early(args, capsys, f"error: {cfg}: `swarm.init_merges`", "merge-registry", "ties", f"Got {name!r}")
    assert "--generations" not in line and "must be linear" not in line
    if name != "bar":
        assert "`init_sums`" in line


def test_init_merges_set_on_the_command_line_blames_set(tmp_path, capsys):
    _refused_early(["--algo", "genome", "--small", "--out", tmp_path / "run", "--generations", "2",
                    "--set", "genome.init_merges=[linear]"], capsys, "error: --set: `genome.init_merges`")


@pytest.mark.parametrize("algo", ["genome", "swarm"])
def test_a_start_the_registry_cannot_merge_for_the_zoo_is_refused_before_ray(tmp_path, capsys, algo):
    """slerp merges exactly 2 experts: as a start over the small zoo's 6 it failed when its recipe
    was first materialized (after Ray's start); the built-in zoo's size is known from its profile."""
    _refused_early(["--algo", algo, "--small", "--out", tmp_path / "run", "--set", f"{algo}.init_merges=[slerp]"],
                   capsys, f"error: `{algo}.init_merges`: `slerp` cannot start a search of 6 experts (merge method `slerp` "
                   "merges exactly 2 experts. Got 6")
    assert not (tmp_path / "run").exists()


def test_resume_over_changed_expert_files_is_refused_before_ray(tmp_path, capsys, small_zoo):
    """A run over your own experts records their sha256 in run.json; an expert's weights changed
    in place since are refused on --resume before Ray starts (the checkpointed population was
    scored on the old ones). The same files pass that check; a record without them (older runs)
    is not compared."""
    import shutil

    from evomerge.config import load_config
    from evomerge.errors import ConfigError
    from evomerge.pipelines.evolve.run import _run_meta
    from evomerge.pipelines.fingerprint import check_unchanged, config_fingerprint

    def same_files(run):  # the check a resume makes (raises when they differ)
        check_unchanged(run / "run.json", config_fingerprint(cfg), where="run", error=ConfigError, advice="-")

    experts = [Path(shutil.copytree(small_zoo.expert_dirs[t], tmp_path / t)) for t in ("rev_digits", "sort_digits")]
    data = {"experts": {"base": str(small_zoo.base_dir), "experts": [{"path": str(e), "task": e.name} for e in experts]},
            "evaluation": {"task_files": {e.name: str(small_zoo.root / "tasks" / e.name) for e in experts}},
            "genome": {"population": 2}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    run = tmp_path / "run"
    run.mkdir()
    record = _run_meta(cfg, "genome", None, "small", config_fingerprint(cfg))
    assert sorted(record["inputs"]["experts"]) == ["rev_digits", "sort_digits"]
    (run / "run.json").write_text(json.dumps(record))
    same_files(run)  # the same files: no refusal
    weights = experts[1] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # one byte of a value changed in place
    _refused_early(["--algo", "genome", "--config", cfg_path, "--out", run, "--resume"], capsys,
                   f"{run / 'run.json'}: cannot resume", "expert `sort_digits` changed since")
    (run / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "inputs"}))
    same_files(run)  # a record from before: not compared


def test_the_zoos_size_comes_from_its_profile_only_without_zoo_dir(tmp_path):
    """A ``zoo_dir`` may hold a zoo of any profile: its size is not taken from the profile (a
    population that fits its pairs would have been refused against the profile's)."""
    from evomerge.config import config_from_dict
    from evomerge.pipelines.evolve.run import _zoo_size

    assert _zoo_size(config_from_dict({}), "small") == 6
    assert _zoo_size(config_from_dict({"zoo_dir": str(tmp_path)}), "small") is None
