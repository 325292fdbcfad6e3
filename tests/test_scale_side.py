"""The scale run's side process (the pool analysis, beside the start): a function runs in a
child interpreter, its value or its error comes back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evomerge.errors import EvomergeError
from evomerge.pipelines.scale.side import SideJob


def test_value_comes_back_from_another_process():
    job = SideJob(os.getpid)
    assert job.result() != os.getpid()  # it ran elsewhere
    assert SideJob(json.loads, '{"a": [1, 2.5]}').result() == {"a": [1, 2.5]}


def test_error_comes_back_with_its_traceback():
    job = SideJob(json.loads, "not json")
    with pytest.raises(EvomergeError, match=r"json\.loads \(in a child process\) failed:(.|\n)*JSONDecodeError"):
        job.result()
    job.wait()  # a cleanup path does not raise


def test_unguarded_script_is_not_run_again(tmp_path):
    """A plain script (no ``if __name__ == "__main__"``) that starts a side job: the child does
    not execute the script (multiprocessing's spawn would, and fail)."""
    marker = tmp_path / "runs.txt"
    script = tmp_path / "plain.py"
    script.write_text(
        "import os\n"
        "from evomerge.pipelines.scale.side import SideJob\n"
        f"open({str(marker)!r}, 'a').write('x')\n"
        "print(SideJob(os.getpid).result() != os.getpid())\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True" and marker.read_text() == "x"


def test_warm_job_imports_first_then_runs_when_sent(tmp_path):
    """A warm child has imported the function's module before its arguments come; it runs the
    function once they do, and a cancelled one exits without running it."""
    job = SideJob.warm(json.loads)
    assert job.proc.poll() is None  # waiting for its arguments
    job.send('{"x": 3}')
    assert job.result() == {"x": 3}

    marker = tmp_path / "ran.txt"
    job = SideJob.warm(_write_marker)
    job.cancel()
    assert job.proc.returncode == 0 and not marker.exists()
    with pytest.raises(EvomergeError, match="cancelled before it ran"):
        job.result()
    job.wait()  # a cleanup path does not raise

    job = SideJob.warm(_write_marker)
    job.send(str(marker))
    assert job.result() == "done" and marker.read_text() == "x"


def _write_marker(path: str) -> str:
    with open(path, "a") as fh:
        fh.write("x")
    return "done"


def test_work_beside_in_a_thread_raises_its_error_on_join():
    """Ray's shutdown runs in a thread beside the report (finish.disconnect_beside): its error
    comes back on join; without a Ray of this run's there is nothing to stop."""
    import threading

    from evomerge.pipelines.scale.finish import Beside, disconnect_beside

    assert disconnect_beside(False) is None
    seen = []
    job = Beside(lambda: seen.append(threading.current_thread().name))
    job.join()
    assert seen == ["ray-shutdown"]  # it ran, in its own thread
    assert Beside(json.loads, "[1, 2]").join() == [1, 2]  # the search phase's skipped cells come back this way
    job = Beside(json.loads, "not json")
    with pytest.raises(json.JSONDecodeError):
        job.join()
