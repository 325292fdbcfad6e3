"""Ctrl-C (SIGINT) and SIGTERM for the commands other than ``scale`` (tests/test_scale_interrupt.py),
as real subprocesses on the small zoo: exit code 130 / 143, one line saying what stopped and how
to resume it (or that there is nothing to resume), no traceback, no process left (Ray stopped),
no temporary or half-written output; the resume the line prints finishes the run."""

from __future__ import annotations

import json
import shlex
import signal

import pytest
import yaml

psutil = pytest.importorskip("psutil")

from _signal_helpers import check_stopped, has, interrupt, start  # noqa: E402


def _resume_args(line: str) -> list[str]:
    """The arguments of the ``resume with: evomerge ...`` command the line prints."""
    cmd = shlex.split(line.split("resume with: ", 1)[1])
    assert cmd[0] == "evomerge" and cmd[-1] == "--resume"
    return cmd[1:]


def _torch_loaded(proc):
    """The command's body is running: torch is mapped into the driver (the CLI imports it only
    inside a command)."""
    me = psutil.Process(proc.pid)

    def when(seen):
        try:
            return any("libtorch" in m.path for m in me.memory_maps())
        except psutil.Error:
            return False
    return when


# ------------------------------------------------------------------------------------------ merge
@pytest.fixture(scope="module")
def merge_args(small_zoo):
    experts = [small_zoo.root / "experts" / n for n in ("brackets", "majority", "rev_digits", "sort_digits")]
    args = ["merge", "--quiet", "--base", str(small_zoo.root / "base"), "-m", "ties"]
    for e in experts:
        args += ["-e", str(e)]
    return args


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_merge_interrupted_while_writing_leaves_no_output(tmp_path, merge_args, sig, code):
    """Signalled once its temporary output folder exists (the merge is being written): the
    folder is gone, the output was never created, the line says so."""
    out = tmp_path / "merged"
    proc = start(*merge_args, "--out", str(out))
    seen, seconds, _, err = interrupt(proc, sig, lambda seen: any(tmp_path.glob(".merged.tmp-*")), poll=0.002)
    line = check_stopped(proc, seen, seconds, err, code, tmp_path)
    assert line == f"interrupted: evomerge merge stopped before it finished; {out} is as it was (nothing to resume: run it again)"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary folder, no lock file


def test_merge_interrupted_keeps_the_previous_output(tmp_path, merge_args):
    """With --overwrite over an earlier merge: the earlier one stays, byte for byte."""
    out = tmp_path / "merged"
    first = start(*merge_args, "--out", str(out))
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = start(*merge_args, "--out", str(out), "--overwrite", "-m", "task_arithmetic")
    seen, seconds, _, err = interrupt(proc, signal.SIGINT, lambda seen: any(tmp_path.glob(".merged.tmp-*")), poll=0.002)
    check_stopped(proc, seen, seconds, err, 130, tmp_path)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_command_without_a_resume_gets_the_generic_line(tmp_path, small_zoo):
    """A command with no line of its own (here ``evaluate``), SIGTERM inside its body: 143 and
    the line that names it (before, typer's silent 130, and SIGTERM killed it uncleaned)."""
    proc = start("evaluate", "--help")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    proc = start("evaluate", "--zoo", "small", "--out", str(tmp_path / "ev.parquet"))
    seen, seconds, _, err = interrupt(proc, signal.SIGTERM, _torch_loaded(proc), poll=0.01)
    line = check_stopped(proc, seen, seconds, err, 143, tmp_path)
    assert line == "interrupted: evomerge evaluate stopped before it finished; nothing to resume (run it again)"


# -------------------------------------------------------------------------------------------- zoo
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_zoo_build_with_workers_stops_its_workers(tmp_path, sig, code):
    """``zoo build --workers 2`` signalled as its forked workers start training: the command
    stops at once (it waited for the experts in training before: 9 s here, tens of seconds on
    the default profile), no worker outlives it, no folder is left."""
    out = tmp_path / "zoo"
    proc = start("zoo", "build", "--profile", "small", "--workers", "2", "--out", str(out))
    seen, seconds, _, err = interrupt(proc, sig, lambda seen: len(seen) >= 2, poll=0.05)
    line = check_stopped(proc, seen, seconds, err, code, tmp_path)
    assert seconds < 5.0, (seconds, err)  # a small expert trains for about 9 s
    assert line == "interrupted: evomerge zoo build stopped before it finished; nothing to resume (run it again)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the zoo nor its temporary folder


# ----------------------------------------------------------------------------------------- evolve
EVOLVE = {"evaluation": {"max_samples": 8, "batch_size": 8, "tasks": ["rev_digits", "sort_digits"]},
          "genome": {"population": 3, "generations": 4, "early_stop_iter": 100, "space": "ab"}}


def _evolve(tmp_path, *extra):
    cfg = tmp_path / "evolve.yaml"
    cfg.write_text(yaml.safe_dump(EVOLVE))
    out = tmp_path / "run"
    args = ["evolve", "--algo", "genome", "--small", "--config", str(cfg), "--out", str(out), "--actors", "1",
            "--seed", "3", *extra]
    return out, args


def _round_done(out):
    return lambda seen: (out / "checkpoints" / "LATEST").is_file()


@pytest.mark.ray
@pytest.mark.parametrize("sig,code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_evolve_interrupted_mid_run_resumes(tmp_path, small_zoo, sig, code):
    """Signalled after its first checkpoint, while the next rounds run on Ray: Ray's processes
    end with it, the line gives the exact resume command, which then finishes the run from the
    checkpoint."""
    out, args = _evolve(tmp_path)
    proc = start(*args)
    seen, seconds, _, err = interrupt(proc, sig, _round_done(out))
    line = check_stopped(proc, seen, seconds, err, code, out)
    assert any(p.seen_as == "raylet" for p in seen.values())  # Ray was up: its processes were checked
    assert line == (f"interrupted: evomerge evolve (the finished rounds stay in {out}); resume with: "
                    + shlex.join(["evomerge", *args, "--resume"]))
    assert not (out / "result.json").exists()
    again = start(*_resume_args(line))
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert json.loads((out / "result.json").read_text())["best_id"]


def _agent_started(seen):
    return any("agent" in p.seen_as.lower() for p in seen.values())


@pytest.mark.ray
# each signal and each moment keeps a default variant; SIGINT once the agents run is under -m slow
@pytest.mark.parametrize("sig,code,moment", [(signal.SIGINT, 130, "gcs"), (signal.SIGTERM, 143, "gcs"),
                                             pytest.param(signal.SIGINT, 130, "agents", marks=pytest.mark.slow),
                                             (signal.SIGTERM, 143, "agents")])
def test_evolve_interrupted_during_ray_start_has_nothing_to_resume(tmp_path, small_zoo, sig, code, moment):
    """Ctrl-C or SIGTERM while ``ray.init`` starts Ray (its GCS up, or its agents too):
    before the run directory is written; no Ray process is left (the half-started GCS, raylet
    and agents included). SIGTERM: the CLI's handler stays in place during the start (Ray's
    own, ``sys.exit(15)``, exited 15 without the line, or was swallowed and the run went on)."""
    out, args = _evolve(tmp_path)
    proc = start(*args)
    seen, seconds, _, err = interrupt(proc, sig, has("gcs_server") if moment == "gcs" else _agent_started, poll=0.01)
    line = check_stopped(proc, seen, seconds, err, code, out)
    assert line == "interrupted: evomerge evolve stopped before its run directory was written; nothing to resume (run it again)"
    assert not out.exists() or not (out / "run.json").exists()


# ------------------------------------------------------------------------------------------- tune
TUNE = {"seed": 0, "merge": {"method": "task_arithmetic", "params": {"lambda": 1.0}},
        "evaluation": {"max_samples": 8, "batch_size": 8},
        "tune": {"space": {"merge.params.lambda": {"low": 0.2, "high": 1.2}}, "sampler": "random"}}


def _trials_in(url, name="evomerge", states=("COMPLETE",)):
    """The study's trials in ``states`` (none before the study exists)."""
    import optuna

    from evomerge.pipelines.tune.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in states]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_tune_interrupted_keeps_its_trials_and_resumes(tmp_path, small_zoo, sig, code):
    """Signalled once the study holds two finished trials: the line counts what the storage
    keeps, no trial is left RUNNING (the one in flight is recorded as failed and enqueued again
    with its parameters), and the printed resume runs that trial first and completes the study
    with --n-trials finished trials besides it."""
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "tune"
    url = f"sqlite:///{out / 'optuna.db'}"
    args = ["tune", "--config", str(cfg), "--small", "--out", str(out), "--n-trials", "6"]
    proc = start(*args)
    seen, seconds, _, err = interrupt(proc, sig, lambda seen: len(_trials_in(url)) >= 2, poll=0.2)
    line = check_stopped(proc, seen, seconds, err, code, out)
    done = len(_trials_in(url))
    assert 2 <= done < 6
    assert line == (f"interrupted: evomerge tune (study `evomerge` in {url} keeps its {done} finished trial(s)); "
                    f"resume with: {shlex.join(['evomerge', *args, '--resume'])}")
    assert _trials_in(url, states=("RUNNING",)) == []
    failed = _trials_in(url, states=("FAIL",))  # the trial in flight: failed, its parameters enqueued again
    waiting = _trials_in(url, states=("WAITING",))
    assert len(failed) <= 1 and len(waiting) == len(failed)
    for f, w in zip(failed, waiting):
        assert f.user_attrs["error"].startswith("interrupted") and w.params == f.params
        assert w.system_attrs["retry_history"] == [f.number]
    again = start(*_resume_args(line))
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert len(_trials_in(url)) == 6  # the cut trial does not count toward --n-trials
    for w in waiting:  # the retry ran, on the parameters the cut trial had drawn (if any: it may
        # have been cut before its first suggestion)
        rerun = next(t for t in _trials_in(url, states=("COMPLETE", "FAIL", "PRUNED")) if t.number == w.number)
        assert rerun.state.name == "COMPLETE" and w.params.items() <= rerun.params.items()
    assert len(_trials_in(url, states=("COMPLETE", "FAIL", "PRUNED"))) == 6 + len(failed)
    assert (out / "trials.parquet").is_file()


def test_tune_interrupted_before_its_study_exists(tmp_path, small_zoo):
    """Signalled inside the command before the storage is opened: nothing to resume, and the
    look for the study created no storage file."""
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(TUNE))
    out = tmp_path / "tune"
    proc = start("tune", "--config", str(cfg), "--small", "--out", str(out), "--n-trials", "2")
    seen, seconds, _, err = interrupt(proc, signal.SIGINT, _torch_loaded(proc), poll=0.01)
    line = check_stopped(proc, seen, seconds, err, 130, out)
    if (out / "optuna.db").exists():  # the study was created in the meantime: then it says so
        assert "resume with:" in line or "before study `evomerge` was created" in line
    else:
        assert line in ("interrupted: evomerge tune stopped before study `evomerge` was created; nothing to resume (run it again)",
                        "interrupted: evomerge tune stopped before it read its config; nothing to resume (run it again)")


# ---------------------------------------------------------------------------------- the mechanism
def test_a_signal_swallowed_by_a_finalizer_is_raised_again():
    """The handler's exception raised inside a finalizer (a garbage collection's, as SQLAlchemy's
    weakref callbacks run during ``evomerge tune``) is dropped by Python; the signal is then
    delivered once more, so the command still stops (it ran on to its end before)."""
    import os
    import time

    from evomerge.interrupts import stop_on_signals

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # the handler runs here, inside the finalizer
                pass

    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals() as fired:
            Finalized()
            time.sleep(5)  # reached only if the signal was lost
            pytest.fail("the signal raised in the finalizer was lost")
    assert fired == [signal.SIGTERM]


def test_a_callback_runs_on_the_first_signal_only_and_before_the_unwinding():
    """``when_interrupted``: called once, inside the handler of the first signal (the signal is
    recorded, the exception not raised yet), not for a second one, and not after its block."""
    import os
    import time

    from evomerge.interrupts import stop_on_signals, when_interrupted

    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals() as fired, when_interrupted(lambda: calls.append(list(fired))):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # reached only if the signal was lost
                pytest.fail("the signal was lost")
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal, while the first one unwinds
                time.sleep(0.2)
    assert calls == [[signal.SIGINT]] and fired == [signal.SIGINT]
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert calls == [[signal.SIGINT]]


def test_a_signal_inside_a_held_block_reaches_its_handler_at_the_end():
    """``held``: with Python's default SIGINT handler and with ours, the signal is recorded inside
    the block (also when another thread takes it from the kernel) and raised once it ends; the
    caller's handlers are back afterwards."""
    import os
    import threading
    import time

    from evomerge.interrupts import Terminated, held, stop_on_signals

    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # a thread the kernel may pick
    # Python's own handler (an earlier test of the session may have left another one)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)  # any handler would have run in here
                reached.append("end of block")
            pytest.fail("the held signal was lost")
        assert reached == ["end of block"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    with pytest.raises(Terminated):
        with stop_on_signals() as fired:
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)
                reached.append(list(fired))
            pytest.fail("the held signal was lost")
    assert reached[-1] == [] and fired == [signal.SIGTERM]


def test_tune_quiets_the_storage_log_once_interrupted_only():
    """``evomerge tune``: SQLAlchemy's log (the traceback of a read the interrupt cut) goes quiet
    on the interrupt, not before it."""
    import logging
    import os
    import time

    from evomerge.cli.tune import _no_interrupt_traceback
    from evomerge.interrupts import stop_on_signals

    logger = logging.getLogger("sqlalchemy")
    level = logger.level
    try:
        with stop_on_signals(), _no_interrupt_traceback():
            pass
        assert logger.level == level != logging.CRITICAL
        with pytest.raises(KeyboardInterrupt):
            with stop_on_signals(), _no_interrupt_traceback():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        assert logger.level == logging.CRITICAL
    finally:
        logger.setLevel(level)


def test_tune_interrupted_line_finds_a_journal_storage(tmp_path, monkeypatch):
    """The interrupted line reads the storage the run used, whatever its kind: an absolute
    ``journal:///`` path (its leading slash is part of the path) with one finished trial is found
    and counted; a journal file that is not there is not created by the look."""
    import optuna

    from evomerge.cli import _common
    from evomerge.cli.tune import interrupted_message
    from evomerge.config import load_config
    from evomerge.pipelines.tune.storage import local_storage_path, open_storage

    monkeypatch.chdir(tmp_path / "..")  # a relative reading of the path would look elsewhere
    monkeypatch.setattr(_common, "ARGV", ["tune", "--out", str(tmp_path / "out")])
    cfg = load_config(None)
    url = f"journal://{tmp_path / 'study.log'}"
    assert local_storage_path(url) == tmp_path / "study.log"
    assert local_storage_path("sqlite:///:memory:") is None and local_storage_path("postgresql://h/db") is None
    study = optuna.create_study(study_name=cfg.tune.study_name, storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    line = interrupted_message(cfg, url, None, tmp_path / "out")
    assert f"keeps its 1 finished trial(s)); resume with: evomerge tune --out {tmp_path / 'out'} --resume" in line, line
    missing = f"journal://{tmp_path / 'none.log'}"
    assert interrupted_message(cfg, missing, None, tmp_path / "out").startswith(
        f"interrupted: evomerge tune stopped before study `{cfg.tune.study_name}` was created")
    assert not (tmp_path / "none.log").exists()


def test_an_interrupted_line_names_the_callers_resume_command(monkeypatch):
    """A program that runs a command for itself (jobs/*.py) sets ``RESUME_COMMAND``: the line's
    resume command becomes its own; a line without one, or no caller's command, is unchanged."""
    from evomerge.cli import _common

    line = "interrupted: evomerge evolve (the finished rounds stay in /r); resume with: evomerge evolve --out /r --resume"
    assert _common.interrupted_line(line) == line
    monkeypatch.setattr(_common, "RESUME_COMMAND", lambda: "python jobs/evolve.py --out s3://b/r --resume")
    assert _common.interrupted_line(line) == ("interrupted: evomerge evolve (the finished rounds stay in /r); "
                                              "resume with: python jobs/evolve.py --out s3://b/r --resume")
    plain = "interrupted before the run directory was written; nothing to resume (start the run again)"
    assert _common.interrupted_line(plain) == plain
