"""Bad inputs, one test per row of issue 16: each asserts the exit code, the one-line message
naming the file or key, that the inputs are unchanged and that no output or temporary is left.

Rows 4 (killed tune worker), 7 (killed merge) and 8 (concurrent merges) are in
``test_tune_killed_worker.py`` and ``test_bad_inputs_writes.py``; row 1 per command in
``test_cli_errors.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from evomerge.cli import main
from evomerge.io import sha256_tree


@pytest.fixture(scope="module")
def zoo(small_zoo):
    return small_zoo


def _experts(zoo, *names):
    names = names or ("brackets", "majority")
    return [a for n in names for a in ("-e", str(zoo.expert_dirs[n]))]


def leftovers(folder: Path) -> list[str]:
    """Temporary or lock entries an output writer left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if re.search(r"\.tmp-|\.old-|\.lock$|evomerge-probe", p.name))


def bad(capsys, args, match, *, out: Path | None = None, inputs=(), code=2):
    """Run the CLI, expect one ``error:`` line matching ``match``, nothing written, inputs unchanged."""
    before = {str(p): sha256_tree(p) for p in inputs}
    capsys.readouterr()
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.strip().splitlines() if ln.startswith("error: ")]  # (progress bars aside)
    assert rc == code, cap.err
    assert len(lines) == 1 and cap.err.strip().endswith(lines[0]), cap.err
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in cap.err + cap.out
    if out is not None:
        assert not out.exists(), f"{out} was written"
        if out.parent.is_dir():
            assert leftovers(out.parent) == []
    assert {str(p): sha256_tree(p) for p in inputs} == before, "an input was modified"
    return lines[0]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def evaluate_task(zoo, task_file: Path, *extra) -> list:
    return ["evaluate", "--base", zoo.base_dir, "--task", f"t={task_file}", "--max-samples", "5", *extra]


# --- row 1 -----------------------------------------------------------------------------------------
def test_row01_usage_error_is_one_line_exit_2(capsys, tmp_path) -> None:
    bad(capsys, ["merge", "--bogus-flag", "--out", tmp_path / "o"], r"No such option: --bogus-flag", out=tmp_path / "o")


# --- row 2 -----------------------------------------------------------------------------------------
def test_row02_huge_line_refused_after_reading_the_limit(zoo, tmp_path, capsys) -> None:
    from evomerge.evaluation.task_data import MAX_LINE_BYTES, load_examples

    f = tmp_path / "huge.jsonl"
    with open(f, "w") as fh:
        fh.write(json.dumps({"prompt": "a" * (50 << 20), "answer": "b"}) + "\n")
    import datasets  # noqa: F401 (imported before measuring: the import itself allocates)

    tracemalloc.start()
    with pytest.raises(Exception, match=r"huge\.jsonl: line 1 is longer than the 8 MiB limit"):
        load_examples(f)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES, f"read {peak} bytes for a refused line"
    bad(capsys, evaluate_task(zoo, f, "--out", tmp_path / "t.parquet"), r"huge\.jsonl: line 1 is longer",
        out=tmp_path / "t.parquet", inputs=[f])


def test_row02_prompt_longer_than_the_context(zoo, tmp_path, capsys) -> None:
    n_pos = json.loads((zoo.base_dir / "config.json").read_text())["max_position_embeddings"]
    f = jsonl(tmp_path / "long.jsonl", [{"prompt": "12", "answer": "21"}, {"prompt": "1" * 8000, "answer": "1"}])
    bad(capsys, evaluate_task(zoo, f), rf"long\.jsonl \(task `t`\): line 2 is \d+ tokens.*context of {n_pos} positions "
                                       r"\(max_position_embeddings\)", inputs=[f])


# --- row 3 -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tune_config(tmp_path) -> Path:
    import yaml

    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump({"tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.0}},
                                            "sampler": "random", "n_trials": 1},
                                   "evaluation": {"max_samples": 8}}))
    return cfg


def test_row03_storage_secrets_never_printed_or_written(zoo, tmp_path, capsys, monkeypatch) -> None:
    cfg = _tune_config(tmp_path)
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("EVO_TEST_SECRET", "envsecret42")
    for url in (f"postgresql://u@127.0.0.1:{port}/db?password=hunter2&sslmode=disable",
                f"postgresql://u:${{EVO_TEST_SECRET}}@127.0.0.1:{port}/db",
                f"postgresql://u:hunter2@127.0.0.1:{port}/db?token=hunter2"):
        line = bad(capsys, ["tune", "--config", cfg, "--small", "--out", tmp_path / "o", "--storage", url],
                   r"cannot be reached", out=tmp_path / "o", inputs=[cfg])
        assert "hunter2" not in line and "envsecret42" not in line
    literal = tmp_path / "literal.yaml"
    import yaml

    data = yaml.safe_load(cfg.read_text())
    data["tune"]["storage"] = "postgresql://u@db/x?password=hunter2"
    literal.write_text(yaml.safe_dump(data))
    line = bad(capsys, ["tune", "--config", literal, "--small", "--out", tmp_path / "o"], r"tune\.storage.*literal password",
               out=tmp_path / "o")
    assert "hunter2" not in line
    # a run whose URL carries a query secret: not on stdout, not in summary.json
    url = f"sqlite:///{tmp_path}/s.db?password=hunter2"
    capsys.readouterr()
    rc = main(["tune", "--config", str(cfg), "--small", "--out", str(tmp_path / "run"), "--storage", url])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert "password=***" in summary
    for text in (out.out, out.err, summary):
        assert "hunter2" not in text


# --- row 6 -----------------------------------------------------------------------------------------
def test_row06_os_errors_on_output_are_one_line(zoo, tmp_path, capsys, monkeypatch) -> None:
    args = ["merge", "-q", *_experts(zoo), "--space", "concat"]
    inputs = [zoo.expert_dirs["brackets"], zoo.expert_dirs["majority"]]
    bad(capsys, [*args, "--out", "/proc/evomerge-test"], r"/proc/evomerge-test: cannot write here \(/proc: No such file", inputs=inputs)
    bad(capsys, [*args, "--out", "/sys/evomerge-test"], r"/sys/evomerge-test: cannot write here \(/sys: Operation not permitted\)", inputs=inputs)
    folder = tmp_path / "tables"
    folder.mkdir()
    bad(capsys, ["evaluate", "--small", "--max-samples", "4", "--out", folder], r"tables: is a folder")
    assert list(folder.iterdir()) == []
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    bad(capsys, [*args, "--out", ".", "--overwrite"], r"refusing to replace the current folder", inputs=inputs)
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"] and leftovers(tmp_path) == []


def test_row06_full_disk_is_one_line_and_leaves_nothing(zoo, tmp_path) -> None:
    """A full disk, simulated by a file-size limit (writes past it fail with EFBIG)."""
    code = ("import resource, signal, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)); "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); from evomerge.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "full"
    res = subprocess.run([sys.executable, "-c", code, "merge", "-q", *_experts(zoo), "--base", str(zoo.base_dir),
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert re.match(rf"error: .*{re.escape(str(out))}.*cannot write the output .*(File too large|os error 27)", lines[0]), lines[0]
    assert not out.exists() and leftovers(tmp_path) == []


# --- row 9 -----------------------------------------------------------------------------------------
def test_row09_shard_paths_stay_in_the_expert_folder(tmp_path, capsys) -> None:
    from test_experts_fixtures import make_base, make_full

    make_base(tmp_path / "base")
    make_full(tmp_path / "base", tmp_path / "f1", seed=1)
    make_full(tmp_path / "base", tmp_path / "other", seed=2)
    for name, entry in (("up", "../other/model.safetensors"), ("abs", str(tmp_path / "other" / "model.safetensors")),
                        ("deep", "sub/../../other/model.safetensors")):
        evil = tmp_path / name
        evil.mkdir()
        shutil.copy(tmp_path / "f1" / "config.json", evil)
        from safetensors import safe_open

        with safe_open(str(tmp_path / "other" / "model.safetensors"), "pt") as fh:
            keys = list(fh.keys())
        (evil / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: entry for k in keys}}))
        bad(capsys, ["merge", "-q", "-e", tmp_path / "f1", "-e", evil, "--base", tmp_path / "base", "--out", tmp_path / "o"],
            rf"{name}/model\.safetensors\.index\.json: shard path .* leaves the checkpoint folder",
            out=tmp_path / "o", inputs=[tmp_path / "f1", evil, tmp_path / "other"])
    # a linked folder inside the expert that points outside is refused too
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(tmp_path / "f1" / "config.json", linked)
    os.symlink(tmp_path / "other", linked / "sub")
    (linked / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "sub/model.safetensors" for k in keys}}))
    bad(capsys, ["merge", "-q", "-e", tmp_path / "f1", "-e", linked, "--base", tmp_path / "base", "--out", tmp_path / "o"],
        r"linked/model\.safetensors\.index\.json: shard path .* \(through a link\)", out=tmp_path / "o")


# --- row 10 ----------------------------------------------------------------------------------------
def test_row10_task_file_content(zoo, tmp_path, capsys) -> None:
    good = {"prompt": "12", "answer": "21"}
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "12", "answer": "21"}\n{"prompt": "caf\xe9", "answer": "x"}\n')
    bad(capsys, evaluate_task(zoo, latin1), r"latin1\.jsonl: line 2: not UTF-8 text \(byte 0xe9", inputs=[latin1])
    null = jsonl(tmp_path / "null.jsonl", [good, {"prompt": "12", "answer": None}])
    bad(capsys, evaluate_task(zoo, null), r"null\.jsonl: line 2: `answer` is null", inputs=[null])
    bad(capsys, ["merge", "-q", *_experts(zoo), "--base", zoo.base_dir, "--method", "regmean", "--rank", "4",
                 "--data", null, "--out", tmp_path / "o"], r"null\.jsonl: line 2: `answer` is null",
        out=tmp_path / "o", inputs=[null])
    empty_str = jsonl(tmp_path / "emptystr.jsonl", [good, {"prompt": "", "answer": "1"}])
    bad(capsys, evaluate_task(zoo, empty_str), r"emptystr\.jsonl: line 2: `prompt` is empty", inputs=[empty_str])
    oov = jsonl(tmp_path / "oov.jsonl", [good, {"prompt": "12", "answer": "\u00e9\u20ac"}])
    bad(capsys, evaluate_task(zoo, oov), r"oov\.jsonl \(task `t`\): line 2: the answer holds characters outside the tokenizer's "
                                         r"vocabulary \('é', '€'\)", inputs=[oov])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad(capsys, evaluate_task(zoo, empty), r"empty\.jsonl: empty file \(no examples\)", inputs=[empty])
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    bad(capsys, evaluate_task(zoo, blank), r"blank\.jsonl: no examples", inputs=[blank])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1", "answer": "1"}\n{"prompt": \n')
    bad(capsys, evaluate_task(zoo, broken), r"broken\.jsonl: line 2: not valid JSON", inputs=[broken])


# --- row 11 ----------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_row11_evaluate_cuda_without_cuda(zoo, capsys) -> None:
    bad(capsys, ["evaluate", "--small", "--device", "cuda", "--max-samples", "4"], r"--device cuda: CUDA is not available")


def test_row11_evaluate_bin_adapter_and_allow_bin(zoo, tmp_path, capsys) -> None:
    from safetensors.torch import load_file

    binexp = tmp_path / "binexp"
    binexp.mkdir()
    src = zoo.expert_dirs["brackets"]
    shutil.copy(src / "adapter_config.json", binexp)
    torch.save(load_file(str(src / "adapter_model.safetensors")), binexp / "adapter_model.bin")
    bad(capsys, ["evaluate", "--small", "-e", binexp, "--max-samples", "4"], r"binexp/adapter_model\.bin.*--allow-bin",
        inputs=[binexp])
    capsys.readouterr()
    assert main(["evaluate", "--small", "-e", str(binexp), "--allow-bin", "--max-samples", "4", "--tasks", "brackets"]) == 0


def test_row11_truncated_base(zoo, tmp_path, capsys) -> None:
    base = tmp_path / "base"
    shutil.copytree(zoo.base_dir, base)
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[: len(data) // 2])
    bad(capsys, ["merge", "-q", *_experts(zoo), "--base", base, "--out", tmp_path / "o"], r"base/model\.safetensors",
        out=tmp_path / "o", inputs=[base])
    f = jsonl(tmp_path / "t.jsonl", [{"prompt": "12", "answer": "21"}])
    bad(capsys, ["evaluate", "--base", base, "--task", f"t={f}"], r"base: cannot load base model", inputs=[base])


def test_row11_evaluate_out_not_overwritten_without_flag(zoo, tmp_path, capsys) -> None:
    table = tmp_path / "t.parquet"
    table.write_bytes(b"not yet a table")
    bad(capsys, ["evaluate", "--small", "--max-samples", "4", "--out", table], r"t\.parquet: output already exists.*--overwrite",
        inputs=[table])
    capsys.readouterr()
    assert main(["evaluate", "--small", "--max-samples", "4", "--tasks", "brackets", "--out", str(table), "--overwrite"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(table).num_rows > 0 and leftovers(tmp_path) == []


def test_row11_max_samples_zero_is_a_usage_error(capsys) -> None:
    bad(capsys, ["evaluate", "--small", "--max-samples", "0"], r"--max-samples.*greater than or equal to 1")


def test_row11_experts_as_a_list(zoo, tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"experts:\n  - {zoo.expert_dirs['brackets']}\n  - {zoo.expert_dirs['majority']}\n")
    bad(capsys, ["merge", "--config", cfg, "--out", tmp_path / "o"], r"c\.yaml: `experts` must be a mapping.*Got a list",
        out=tmp_path / "o", inputs=[cfg])


def test_row11_yaml_1_2_numbers_and_booleans(zoo, tmp_path, capsys) -> None:
    from evomerge.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("merge:\n  method: ties\n  params: {density: 5e-1, lambda: 1e0}\nrht:\n  sigma_g: .5E-1\n")
    c = load_config(cfg)
    assert c.merge.params == {"density": 0.5, "lambda": 1.0} and c.rht.sigma_g == 0.05
    yes_no = tmp_path / "w.yaml"
    yes_no.write_text("merge:\n  weights: [yes, 0.5]\n")  # one problem, one line
    bad(capsys, ["merge", "--config", yes_no, *_experts(zoo), "--out", tmp_path / "o"],
        r"w\.yaml: `merge\.weights\.0`: Input should be a valid number.*Got 'yes'", code=2, out=tmp_path / "o")


def test_row11_failed_validation_leaves_no_output_folder(zoo, tmp_path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tune:\n  space:\n    rht.gamma: {low: 0.5, high: 3.0}\n")
    out = tmp_path / "run"
    bad(capsys, ["tune", "--config", cfg, "--small", "--out", out], r"rht\.gamma", out=out)
    bad(capsys, ["evolve", "--algo", "genome", "--set", "genome.population=1", "--out", out], r"genome\.population", out=out)
    bad(capsys, ["analyze", "-e", tmp_path / "missing", "--out", out], r"missing: expert not found", out=out)


def test_row11_placement_failure_needs_no_resume(zoo, tmp_path) -> None:
    """Actors that cannot be placed (a timeout) stop the run before any round: the rerun needs no --resume."""
    from evomerge.config import EvomergeConfig
    from evomerge.errors import ConfigError
    from evomerge.pipelines.evolve.run import run_evolve

    class Unplaceable:  # stands in for a Ray runtime whose placement group times out
        def start(self, *a, **k):
            raise ConfigError("ray: the actors could not be placed within ray.placement_timeout_s")

    out = tmp_path / "run"
    cfg = EvomergeConfig.model_validate({"genome": {"population": 2, "generations": 1}})
    for _ in range(2):  # the second call is the rerun, without resume
        with pytest.raises(ConfigError, match="could not be placed"):
            run_evolve(cfg, "genome", out, runtime=Unplaceable(), progress=False)
    assert not (out / "run.json").exists()


def test_row11_resume_mismatch_names_the_key(tmp_path) -> None:
    from evomerge.errors import ConfigError
    from evomerge.pipelines.evolve.run import _prepare_out

    meta = {"algo": "genome", "experts": ["a", "b"], "tasks": ["t"],
            "config": {"seed": 0, "genome": {"population": 4, "sigma": 0.001}, "merge": {"method": "ties"}}}
    _prepare_out(tmp_path / "run", meta, resume=False)
    changed = json.loads(json.dumps(meta))
    changed["config"]["genome"]["sigma"] = 0.01
    with pytest.raises(ConfigError) as err:
        _prepare_out(tmp_path / "run", changed, resume=True)
    msg = str(err.value)
    assert "`genome.sigma`: 0.001 -> 0.01" in msg and "population" not in msg and "\n" not in msg


def test_row11_base_must_fit_the_adapters_claims(tmp_path, capsys) -> None:
    from test_experts_fixtures import make_base, make_lora

    make_base(tmp_path / "base")
    make_base(tmp_path / "wide", tokenizer=False, hidden_size=48)
    make_lora(tmp_path / "base", tmp_path / "l1", seed=1)
    for name in ("w1", "w2"):  # trained on base, but both claim the wide model as their base
        make_lora(tmp_path / "base", tmp_path / name, seed=2, base_name=str(tmp_path / "wide"))
    args = ["merge", "-q", "-e", tmp_path / "w1", "-e", tmp_path / "w2", "--base", tmp_path / "base", "--space", "concat"]
    bad(capsys, [*args, "--out", tmp_path / "o"], r"w1/adapter_config\.json: base_model_name_or_path .* is another model "
        r"than --base .*hidden_size", out=tmp_path / "o", inputs=[tmp_path / "w1", tmp_path / "w2"])
    make_lora(tmp_path / "base", tmp_path / "l3", seed=3)
    conf = json.loads((tmp_path / "l3" / "adapter_config.json").read_text())
    conf["target_modules"] = ["q_proj", "v_proj", "wq_nonexistent"]
    (tmp_path / "l3" / "adapter_config.json").write_text(json.dumps(conf))
    bad(capsys, ["merge", "-q", "-e", tmp_path / "l1", "-e", tmp_path / "l3", "--base", tmp_path / "base", "--space",
                 "concat", "--out", tmp_path / "o"], r"l3/adapter_config\.json: target_modules entry 'wq_nonexistent' "
        r"names no module of the base", out=tmp_path / "o")


def test_row11_outputs_get_umask_permissions(zoo, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    old = os.umask(0o022)
    try:
        assert main(["merge", "-q", *_experts(zoo), "--base", str(zoo.base_dir), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes
    assert out.stat().st_mode & 0o777 == 0o755


# --- a method that cannot take these experts or options: refused before the pool is read ---------
def test_row11_merge_method_refusals_come_before_any_work(zoo, tmp_path, capsys, monkeypatch) -> None:
    import evomerge.experts.pool as pool_module

    def no_pool(*args, **kwargs):
        raise AssertionError("the pool was read before the refusal")

    monkeypatch.setattr(pool_module, "load_pool", no_pool)
    out, experts = tmp_path / "o", [zoo.expert_dirs[n] for n in ("brackets", "majority", "sort_digits")]
    three = _experts(zoo, "brackets", "majority", "sort_digits")
    cases = [
        ([*three, "--method", "slerp", "--rank", "4"], r"^error: merge method `slerp` merges exactly 2 experts\. Got 3 instead\.$"),
        ([*_experts(zoo), "--method", "emr", "--rank", "8"],
         r"^error: --rank 8 \(merge\.rank\): merge method `emr` writes its own per-task layout .* drop --rank$"),
        ([*_experts(zoo), "--method", "breadcrumbs", "-p", "density=0.8", "-p", "gamma=0.5", "--rank", "4"],
         r"`density` \+ `gamma` must be <= 1\. Got 0\.8 \+ 0\.5 instead\."),
    ]
    for args, match in cases:
        bad(capsys, ["merge", *args, "--out", out], match, out=out, inputs=experts)
    monkeypatch.undo()  # the same methods, where they fit, still merge
    assert main(["merge", "-q", *_experts(zoo), "--method", "slerp", "--rank", "4", "--out", str(out)]) == 0
    assert main(["merge", "-q", *_experts(zoo), "--method", "emr", "--out", str(tmp_path / "emr")]) == 0
    assert (tmp_path / "emr" / "emr_unified.safetensors").is_file()


def test_report_names_what_is_wrong_with_its_folder(tmp_path, capsys):
    """``evomerge report RUN``: a folder that is not there, a file, and a folder that is not a
    scale run each get their own line (the first was told "plan.json missing")."""
    bad(capsys, ["report", tmp_path / "nope"], r"nope: no such folder \(the scale run's --out\)$")
    (tmp_path / "file").write_text("x")
    bad(capsys, ["report", tmp_path / "file"], r"file: not a folder", inputs=[tmp_path / "file"])
    (tmp_path / "other").mkdir()
    bad(capsys, ["report", tmp_path / "other"], r"other: not a scale run directory \(plan.json missing\)$")
    assert not (tmp_path / "nope").exists() and list((tmp_path / "other").iterdir()) == []
