"""Optuna storages and study bookkeeping, on real storages (SQLite file, journal file)."""

from __future__ import annotations

import socket
import time

import optuna
import pytest

from evomerge.errors import ConfigError
from evomerge.storage_uri import mask_uri
from evomerge.pipelines.tune.storage import ENV_VAR, open_storage, postgres_driver, resolve_storage_url
from evomerge.pipelines.tune.study import n_finished, open_study, recording_errors, run_study

optuna.logging.set_verbosity(optuna.logging.ERROR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_storage_url_precedence_and_env_expansion(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_storage_url(None, None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert resolve_storage_url(None, "sqlite:///a.db", tmp_path) == "sqlite:///a.db"
    monkeypatch.setenv(ENV_VAR, "sqlite:///env.db")
    assert resolve_storage_url(None, "sqlite:///a.db", tmp_path) == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///cli.db", "sqlite:///a.db", tmp_path) == "sqlite:///cli.db"
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("EVO_TEST_PW", "s3cr3t")
    url = resolve_storage_url(None, "postgresql://u:${EVO_TEST_PW}@db:5432/optuna", tmp_path)
    assert url == "postgresql://u:s3cr3t@db:5432/optuna"
    assert mask_uri(url) == "postgresql://u:***@db:5432/optuna"
    with pytest.raises(ConfigError, match="`EVO_TEST_NOT_SET` used in the storage URL is not set"):
        resolve_storage_url(None, "postgresql://u:${EVO_TEST_NOT_SET}@db/optuna", tmp_path)


def test_literal_password_in_config_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="literal password") as err:
        resolve_storage_url(None, "postgresql://u:hunter2@db/optuna", tmp_path)
    assert "hunter2" not in str(err.value)


def test_unreachable_storage_fails_fast_with_masked_message(tmp_path) -> None:
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot be reached") as err:
        open_storage(f"postgresql://evomerge:hunter2@127.0.0.1:{port}/optuna")
    assert time.perf_counter() - t0 < 15
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(ConfigError, match="not a URL"):
        open_storage("optuna.db")


@pytest.mark.parametrize("quote", ["`", '"', "'"])
def test_masking_keeps_the_messages_quotes_and_hides_any_password(quote) -> None:
    """A query password followed by the message's closing backtick lost the backtick to the mask;
    a password may hold any character, so a value is masked to its end (the review's examples)."""
    url = "postgresql://u@127.0.0.1:1/x?password=abc&sslmode=require"
    shown = "postgresql://u@127.0.0.1:1/x?password=***&sslmode=require"
    assert mask_uri(f"storage {quote}{url}{quote} cannot be reached") == f"storage {quote}{shown}{quote} cannot be reached"
    assert mask_uri(f"dsn {quote}password=abc{quote}.") == f"dsn {quote}password=***{quote}."
    assert mask_uri(f"x {quote}postgresql://u@h/x?password=ab{quote}cd{quote} y") == f"x {quote}postgresql://u@h/x?password=***{quote} y"
    for secret in ("ab|cd^ef", "p<a>ss|w^rd", "a'b,c)", "***secret", 'q"`z'):
        for text in (f"host=db user=u password={secret}", f"postgresql://u@h/x?password={secret}"):
            masked = mask_uri(text)
            assert masked.endswith("password=***") and secret not in masked, masked
    assert mask_uri("x?password=${PGPASS}`") == "x?password=${PGPASS}`"


def test_postgres_url_gets_an_installed_driver() -> None:
    import importlib.util

    out = postgres_driver("postgresql://u@h/db")
    if importlib.util.find_spec("psycopg") is None:
        assert out == "postgresql+psycopg2://u@h/db"
    assert postgres_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_study_create_refuse_resume_and_space_mismatch(tmp_path, kind) -> None:
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    kw = dict(sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(), shown_url=url)
    study = open_study(open_storage(url), "st", "space-A", resume=False, **kw)
    run_study(study, lambda t: t.suggest_float("x", 0, 1), n_trials=3, timeout=None)
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        open_study(open_storage(url), "st", "space-A", resume=False, **kw)
    with pytest.raises(ConfigError, match="different search space"):
        open_study(open_storage(url), "st", "space-B", resume=True, **kw)
    again = open_study(open_storage(url), "st", "space-A", resume=True, **kw)
    assert n_finished(again) == 3
    # n_trials is the study's total: resuming with 5 runs only the 2 missing trials
    assert run_study(again, lambda t: t.suggest_float("x", 0, 1), n_trials=5, timeout=None) == 2
    assert n_finished(again) == 5


def test_crashing_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    study = open_study(open_storage(url), "crash", "sp", resume=False, sampler=optuna.samplers.RandomSampler(seed=1),
                       pruner=optuna.pruners.NopPruner(), shown_url=url)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise RuntimeError("merge blew up")
        return x

    run_study(study, recording_errors(objective), n_trials=4, timeout=None)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["error"] == "RuntimeError: merge blew up"


def test_sqlite_storage_writes_while_a_read_is_left_open(tmp_path) -> None:
    """WAL mode: a read that Ctrl-C cut mid-fetch (its transaction left open) no longer blocks
    the worker's next write, which used to wait out the 60 s busy timeout."""
    import sqlite3
    import threading
    import time

    import optuna

    db = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{db}")
    study = optuna.create_study(storage=storage, study_name="s")
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): fine here
        trial = study.ask()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = sqlite3.connect(db, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM trials").fetchone()  # a read transaction, left open
    release = threading.Timer(10.0, reader.rollback)
    release.start()
    try:
        t0 = time.monotonic()
        trial.set_user_attr("error", "interrupted")
        waited = time.monotonic() - t0
    finally:
        release.cancel()
        reader.close()
    assert waited < 5.0
    assert storage.get_trial(trial._trial_id).user_attrs["error"] == "interrupted"
