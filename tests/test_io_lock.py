"""``evomerge.io.file_lock``, the one flock helper: blocking (the zoo build waits for another
builder) and non-blocking (a second writer of one output is refused), each against a real
second process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evomerge.errors import OutputError
from evomerge.io import file_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from evomerge.io import file_lock
    lock, held, release = map(Path, sys.argv[1:4])
    with file_lock(lock):
        held.write_text("held")
        while not release.exists():
            time.sleep(0.02)
""")

WAITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from evomerge.io import file_lock
    lock, got = map(Path, sys.argv[1:3])
    with file_lock(lock, blocking=True):
        got.write_text(repr(time.time()))
""")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def holder(tmp_path):
    """A second process holding ``tmp_path/x.lock`` until ``release()`` is called."""
    lock, held, release = tmp_path / "x.lock", tmp_path / "held", tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(held), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(held, proc)
        yield lock, lambda: (release.write_text("go"), time.time())[1], proc
    finally:
        release.write_text("go")
        proc.wait(timeout=60)


def test_non_blocking_second_process_is_refused(holder) -> None:
    lock, release, proc = holder
    with pytest.raises(OutputError, match="^busy: out$"):
        with file_lock(lock, blocking=False, busy="busy: out"):
            pass
    release()
    assert proc.wait(timeout=60) == 0
    with file_lock(lock, blocking=False, busy="busy: out"):  # free again: taken at once
        assert lock.exists()
    assert not lock.exists()  # removed on release


def test_blocking_second_process_waits_until_release(holder, tmp_path) -> None:
    lock, release, _ = holder
    got = tmp_path / "got"
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(lock), str(got)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)  # ample time to import and take the lock, were it free
        assert waiter.poll() is None and not got.exists(), "the waiter did not block on the held lock"
        released_at = release()
        assert waiter.wait(timeout=60) == 0, waiter.communicate()
        assert float(got.read_text()) >= released_at - 0.05
    finally:
        if waiter.poll() is None:
            waiter.kill()


def test_output_writes_take_the_lock_non_blocking(tmp_path) -> None:
    """atomic_dir refuses while another process holds the output's lock (the output_lock_path)."""
    from evomerge.io import atomic_dir, output_lock_path

    out = tmp_path / "result"
    held, release = tmp_path / "held", tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(output_lock_path(out)), str(held), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(held, proc)
        with pytest.raises(OutputError, match="another evomerge process is writing this output now"):
            with atomic_dir(out):
                pass
        assert not out.exists()
    finally:
        release.write_text("go")
        proc.wait(timeout=60)
    with atomic_dir(out) as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x"
