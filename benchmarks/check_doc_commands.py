"""Run every shell command written in README.md and docs/*.md as written, from a fresh clone.

    python benchmarks/check_doc_commands.py [--list] [--only REGEX] [--timeout S] [--budget S] [--keep]

What is a command: a line (``\\`` continuations joined) in a fenced ``bash``/``sh``/``console``
block that starts with ``evomerge``, ``python``/``python3`` or ``NAME=VALUE`` before one of
those (``Z=$(evomerge zoo path --small)`` assignments are kept and run before the later
commands of the same page). A fenced ``yaml`` block whose first line is ``# file: NAME`` is
written as ``NAME`` into the clone first (the configs the commands name). A command whose
comment says ``(exits N`` must exit with N (``zoo check`` on the test zoo fails on purpose).

How it runs: ``git clone`` of HEAD into a temporary folder (the committed tree, as a newcomer
gets it), each page's commands in order with that clone as the working folder (cleaned back
to the committed tree, the config files written again, before each page), a fresh empty
``HOME`` (so no cached zoo or Ray state), ``PYTHONPATH`` on the clone (its code, through this
environment's installed dependencies) and a timeout each. Prints PASS/FAIL/SKIP per command,
exit 1 on any FAIL.

What is skipped, each said with its reason in the output (:data:`LONG` and :data:`NEEDS`):
the long runs the lead runs (the default scale run and what continues it, the paper preset, the
quick-start install lines and the full test suite), commands that need a service this machine
does not have (a running Ray cluster or head, a PostgreSQL server), and ``ray job submit``
lines (not evomerge/python commands; tests/test_jobs_ray_head.py submits the jobs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
COMMAND = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:evomerge|python3?)\b")
EXPECTED_EXIT = re.compile(r"#.*\(exits (\d+)")  # a command the docs say fails, e.g. `# ... (exits 1: why)`
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\$\(.*\)\s*(#.*)?$")

#: Commands marked long: (regex on the command, reason). The lead runs these.
LONG = [
    (r"pip install .*evomerge scale --out runs/scale", "quick-start command 1: install + the default scale run"),
    (r"pip install .*python -m pytest", "quick-start command 2: install + the full test suite"),
    (r"^evomerge scale --out runs/scale(\s|$)", "the default scale run on the shipped default zoo (or its continuation)"),
    (r"^evomerge report runs/scale(\s|$)", "reads the default scale run's folder"),
    (r"--preset paper", "the seed paper's protocol (hours on 2 cores)"),
]
#: Commands that need a service this machine does not run: (regex, what).
NEEDS = [
    (r"--ray-address auto", "a running Ray cluster to join"),
    (r"postgresql://", "a PostgreSQL server"),
    (r"^ray job submit", "a Ray head to submit to (tests/test_jobs_ray_head.py submits the jobs)"),
]


@dataclass
class Command:
    page: str
    line: int
    text: str
    skip: str | None = None


@dataclass
class Page:
    name: str
    commands: list[Command] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def _fences(text: str):
    """``(info, first line number, body lines)`` of every fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\S*)", lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        yield m.group(1).lower(), start + 1, body
        i += 1


def _logical_lines(body: list[str], first: int):
    """Lines with ``\\`` continuations joined: ``(line number, text)``."""
    buf, at = "", None
    for n, raw in enumerate(body, first):
        line = raw.rstrip()
        if at is None:
            at = n
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        yield at, (buf + line.strip()).strip()
        buf, at = "", None
    if buf:
        yield at, buf.strip()


def _classify(text: str) -> str | None:
    for pattern, why in NEEDS:
        if re.search(pattern, text):
            return f"needs {why}"
    for pattern, why in LONG:
        if re.search(pattern, text):
            return f"long: {why}"
    return None


def parse_page(path: Path) -> Page:
    page = Page(str(path.relative_to(ROOT)))
    for info, first, body in _fences(path.read_text()):
        if info == "yaml" and body and (m := re.match(r"^#\s*file:\s*(\S+)", body[0].strip())):
            page.files[m.group(1)] = "\n".join(body[1:]) + "\n"
            continue
        if info not in SHELL_FENCES:
            continue
        for n, text in _logical_lines(body, first):
            text = text[2:] if text.startswith("$ ") else text
            if text.startswith("ray job submit"):
                page.commands.append(Command(page.name, n, text, _classify(text)))
            elif COMMAND.match(text) or ASSIGNMENT.match(text):
                page.commands.append(Command(page.name, n, text, _classify(text)))
    return page


def pages(paths: list[Path]) -> list[Page]:
    return [parse_page(p) for p in paths]


def run_all(all_pages: list[Page], only: str | None, timeout: float, keep: bool, budget: float | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="evomerge-doc-commands-"))
    clone, home = work / "clone", work / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    print(f"fresh clone of {commit} in {clone}; HOME={home}; timeout {timeout:g} s per command", flush=True)
    files = {name: content for page in all_pages for name, content in page.files.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVOMERGE_", "RAY_", "PYTEST"))}
    env.update(HOME=str(home), PYTHONPATH=str(clone), MPLBACKEND="Agg",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0, "NOT RUN": 0}
    started = time.monotonic()
    for page in all_pages:  # each page starts from the clone as committed, with the config files written
        subprocess.run(["git", "clean", "-fdxq"], cwd=clone, check=True)
        for name, content in files.items():
            (clone / name).write_text(content)
        assignments: list[str] = []
        for cmd in page.commands:
            where = f"{cmd.page}:{cmd.line}"
            if ASSIGNMENT.match(cmd.text):
                assignments.append(cmd.text)
            if only and not re.search(only, cmd.text):
                continue
            if cmd.skip:
                counts["SKIP"] += 1
                print(f"SKIP {where}: {cmd.text}\n     ({cmd.skip})", flush=True)
                continue
            if budget is not None and time.monotonic() - started > budget:
                counts["NOT RUN"] += 1
                print(f"NOT RUN {where}: {cmd.text}\n     (--budget {budget:g} s spent)", flush=True)
                continue
            script = "set -e -o pipefail\n" + "\n".join(assignments + ([] if ASSIGNMENT.match(cmd.text) else [cmd.text]))
            expected = int(m.group(1)) if (m := EXPECTED_EXIT.search(cmd.text)) else 0
            t0 = time.monotonic()
            try:
                res = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                                     timeout=timeout)
                ok, tail = res.returncode == expected, (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
                why = f"exit {res.returncode}" + (f", the docs say {expected}" if expected else "")
            except subprocess.TimeoutExpired:
                ok, tail, why = False, [], f"timed out after {timeout:g} s"
            status = "PASS" if ok else "FAIL"
            counts[status] += 1
            print(f"{status} {where} ({time.monotonic() - t0:.1f} s): {cmd.text}", flush=True)
            if not ok:
                print(f"     {why}: " + " | ".join(tail), flush=True)
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP, {counts['NOT RUN']} NOT RUN "
          f"(commit {commit})", flush=True)
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if counts["FAIL"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the commands and what would be skipped; run nothing")
    p.add_argument("--only", default=None, help="run only the commands matching this regex")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    p.add_argument("--keep", action="store_true", help="keep the clone and its outputs")
    p.add_argument("--budget", type=float, default=None, help="start no command after this many seconds (NOT RUN)")
    args = p.parse_args(argv)
    found = pages([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    if args.list:
        for page in found:
            for name in page.files:
                print(f"FILE {page.name}: {name}")
            for c in page.commands:
                print(f"{'SKIP' if c.skip else 'RUN '} {c.page}:{c.line}: {c.text}" + (f"  ({c.skip})" if c.skip else ""))
        return 0
    return run_all(found, args.only, args.timeout, args.keep, args.budget)


if __name__ == "__main__":
    sys.exit(main())
