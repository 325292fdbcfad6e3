"""Keep an object-store URI a copy of a job's local run folder, while the job runs and when it ends.

A job whose ``--out`` is a URI (``s3://``, ``gs://``, any ``pyarrow.fs`` URI) runs the command
in a local scratch folder. :class:`Mirror` copies that folder to the URI:

* **incrementally**: only the files that changed since the last copy go up (by inode, size and
  modification time; the project replaces its files by renaming, so a changed file is a new
  inode); a file the run removed (an old checkpoint) is removed from the URI too, but only one
  this job put there or fetched from there;
* **from a consistent snapshot**: the changed files are hard-linked (small ones copied) into a
  staging folder, and the folder is listed again: if anything changed meanwhile, the snapshot is
  taken again. An SQLite database (Optuna's ``optuna.db``, live while workers write it: the job
  names it, or an SQLite journal lies beside it) is copied with SQLite's backup API, its
  ``-wal`` / ``-shm`` / ``-journal`` files left out;
* **in the order the run wrote its files** (modification time), removals last: at every moment
  the URI holds a state the run's folder went through, plus files it later removed. A run
  that writes data before the pointer to it (``checkpoints/LATEST`` after the checkpoint it
  names) is therefore never seen half-written, even if the copy is cut (``ray job stop``
  sends SIGKILL 3 s after SIGTERM);
* **atomically per file**: an object store makes an object appear whole when its upload
  completes; on other file systems each file is written under a temporary name
  (``.NAME.tmp-<pid>-<random>``) and renamed into place. Temporary names are never fetched.

:meth:`Mirror.fetch` brings the URI's run into the scratch folder for ``--resume``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

from evomerge.pipelines.tune.files import SQLITE_SIDE_SUFFIXES as SQLITE_SIDE

SQLITE_PAGE_MIN = 512  # a smaller file is no SQLite database (copied as it is)
COPY_BELOW = 1 << 20  # files smaller than this are copied into the snapshot, larger ones hard-linked
SNAPSHOT_TRIES = 5
CHUNK = 8 << 20


def temporary(name: str) -> bool:
    """A writer's temporary or lock file (``.NAME.tmp-*``, ``.NAME.old-*``, ``.NAME.lock``)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name or name.endswith(".lock"))


def whole_objects(fs) -> bool:
    """Whether ``fs`` makes every object appear whole when its upload completes (object stores)."""
    import pyarrow.fs as pafs

    base = fs.base_fs if isinstance(fs, pafs.SubTreeFileSystem) else fs
    kinds = tuple(getattr(pafs, n) for n in ("S3FileSystem", "GcsFileSystem", "AzureFileSystem") if hasattr(pafs, n))
    return isinstance(base, kinds)


class Mirror:
    """The URI ``uri`` as a copy of the folder ``local``; ``work`` is a scratch folder of its own
    (the snapshot is staged there: on the same file system as ``local``, for hard links).
    ``skip(rel)``: relative paths never copied (a job's private working folders)."""

    def __init__(self, local: Path, uri: str, work: Path, skip: Callable[[str], bool] = lambda rel: False,
                 databases: Iterable[str] = ()) -> None:
        from evomerge import storage_uri

        self.local, self.uri, self.work, self.skip = Path(local), uri, Path(work), skip
        self.databases = frozenset(databases)
        self.fs, root = storage_uri.resolve(uri)
        self.root = root.rstrip("/")
        self.whole = whole_objects(self.fs)
        self._made: set[str] = set()  # folders created at the store
        self.remote: dict[str, tuple] = {}  # what the URI holds from this job: path -> signature of its source
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the URI
    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def remote_files(self) -> list[str]:
        """The files under the URI (relative, sorted), temporaries left out."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        n = len(self.root) + 1 if self.root else 0
        return sorted(i.path[n:] for i in infos
                      if i.type == pafs.FileType.File and not temporary(i.path.rsplit("/", 1)[-1]))

    def fetch(self, files: Iterable[str]) -> None:
        """Copy ``files`` (relative, as :meth:`remote_files` lists them) from the URI into ``local``,
        each written atomically (:func:`evomerge.io.atomic_file`)."""
        from evomerge.io import atomic_file

        for rel in files:
            dst = self.local / rel
            with self.fs.open_input_stream(self._path(rel)) as src, atomic_file(dst) as out:
                shutil.copyfileobj(src, out, CHUNK)
            self.remote[rel] = self._signature(rel, dst.stat())

    def _put(self, src: Path, rel: str) -> None:
        dest = self._path(rel)
        parent, _, name = dest.rpartition("/")
        folder = self.root if self.whole else parent  # an object store needs no folder but its prefix
        if folder and folder not in self._made:
            self.fs.create_dir(folder, recursive=True)
            self._made.add(folder)
        if self.whole:
            from evomerge.interrupts import held

            # pyarrow completes an object-store upload when its stream is closed, also by an
            # exception: an interrupt must not cut one between two chunks (it waits for the file)
            with held():
                self._stream(src, dest)
            return
        tmp = f"{parent}/.{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}" if parent else f".{name}.tmp-{os.getpid()}"
        try:
            self._stream(src, tmp)
            self.fs.move(tmp, dest)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.delete_file(tmp)
            raise

    def _stream(self, src: Path, dest: str) -> None:
        with open(src, "rb") as fh, self.fs.open_output_stream(dest) as out:
            shutil.copyfileobj(fh, out, CHUNK)

    def _remove(self, rels: Iterable[str], kept: set[str]) -> None:
        import pyarrow.fs as pafs

        dirs = set()
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._path(rel))
            self.remote.pop(rel, None)
            parts = rel.split("/")[:-1]
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        if self.whole:
            return  # an object store has no folders to leave behind
        kept_dirs = {"/".join(k.split("/")[:i]) for k in kept for i in range(1, k.count("/") + 1)}
        for d in sorted(dirs - kept_dirs, key=lambda d: -d.count("/")):  # the deepest first
            path = self._path(d)
            self._made.discard(path)
            with contextlib.suppress(Exception):
                if not self.fs.get_file_info(pafs.FileSelector(path, recursive=True)):
                    self.fs.delete_dir(path)

    # ------------------------------------------------------------------ the local folder
    def _is_sqlite(self, rel: str, st: os.stat_result) -> bool:
        """A database the job names (``databases``), or a file beside an SQLite journal. Told by
        name, never by opening it: closing any descriptor of a database drops every POSIX lock
        this process's SQLite connections hold on it (the job's own study connection), which
        corrupts a database other processes write."""
        return rel in self.databases or any((self.local / (rel + s)).exists() for s in SQLITE_SIDE)

    def _signature(self, rel: str, st: os.stat_result) -> tuple:
        sig: tuple = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._is_sqlite(rel, st):  # its last commits may be in its write-ahead log
            side = []
            for suffix in SQLITE_SIDE:
                try:
                    s = (self.local / (rel + suffix)).stat()
                    side.append((s.st_ino, s.st_size, s.st_mtime_ns))
                except FileNotFoundError:
                    side.append(None)
            sig = ("sqlite", *sig, *side)
        return sig

    def scan(self) -> dict[str, tuple]:
        """``{relative path: signature}`` of the local folder's files (temporaries, skipped
        paths and SQLite's side files left out)."""
        found: dict[str, os.stat_result] = {}
        if not self.local.is_dir():
            return {}
        for dirpath, dirnames, filenames in os.walk(self.local):
            base = Path(dirpath).relative_to(self.local).as_posix()
            base = "" if base == "." else base + "/"
            dirnames[:] = [d for d in dirnames if not temporary(d) and not self.skip(base + d)]
            for name in filenames:
                rel = base + name
                if temporary(name) or self.skip(rel):
                    continue
                try:
                    st = os.stat(Path(dirpath, name))
                except FileNotFoundError:
                    continue
                found[rel] = st
        out = {}
        for rel, st in found.items():
            if rel.endswith(SQLITE_SIDE) and any(rel.endswith(s) and rel[: -len(s)] in found for s in SQLITE_SIDE):
                continue
            out[rel] = self._signature(rel, st)
        return out

    def _snapshot(self, stage: Path) -> tuple[dict[str, tuple], dict[str, tuple]] | None:
        """``(every file's signature, the changed ones)`` with the changed ones staged in
        ``stage``, all as at one moment; None if the folder kept changing."""
        for _ in range(SNAPSHOT_TRIES):
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            before = self.scan()
            changed = {rel: sig for rel, sig in before.items() if self.remote.get(rel) != sig}
            try:
                for rel, sig in changed.items():
                    src, dst = self.local / rel, stage / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if sig[0] == "sqlite" and sig[2] >= SQLITE_PAGE_MIN:
                        _sqlite_copy(src, dst)
                    elif sig[1] < COPY_BELOW:
                        shutil.copy2(src, dst)
                    else:
                        try:
                            os.link(src, dst)
                        except OSError:
                            shutil.copy2(src, dst)
            except FileNotFoundError:
                continue  # removed meanwhile: look again
            after = self.scan()
            if _settled(before) == _settled(after):
                return before, changed
        return None

    # ------------------------------------------------------------------ one copy
    def publish(self, stop: threading.Event | None = None) -> bool:
        """Bring the URI up to date with the local folder; False if ``stop`` was set before it
        finished, or the folder kept changing (it is tried again next time)."""
        with self._lock:
            if not self.local.is_dir():  # nothing written (or the command removed its empty run): nothing to do
                return True
            stage = self.work / "snapshot"
            try:
                snap = self._snapshot(stage)
                if snap is None:
                    return False
                now, changed = snap
                # the order the run wrote them: data before the pointers to it
                order = sorted(changed, key=lambda rel: (_mtime(changed[rel]), -rel.count("/"), rel))
                for rel in order:
                    if stop is not None and stop.is_set():
                        return False
                    self._put(stage / rel, rel)
                    self.remote[rel] = changed[rel]
                if stop is not None and stop.is_set():
                    return False
                self._remove([rel for rel in self.remote if rel not in now], set(now))  # what the run removed
                return True
            finally:
                shutil.rmtree(stage, ignore_errors=True)


def _mtime(sig: tuple) -> int:
    return sig[3] if sig[0] == "sqlite" else sig[2]


def _settled(files: dict[str, tuple]) -> dict[str, tuple]:
    """The signatures a snapshot must find unchanged: an SQLite database is copied consistently by
    SQLite itself, whatever its writers do meanwhile."""
    return {rel: (sig if sig[0] != "sqlite" else "sqlite") for rel, sig in files.items()}


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database, its write-ahead log folded in (SQLite's
    backup); a file that is no database after all is copied as it is."""
    try:
        with contextlib.closing(sqlite3.connect(str(src), timeout=60)) as s, \
                contextlib.closing(sqlite3.connect(str(dst))) as d:
            s.backup(d)
    except sqlite3.DatabaseError:  # "file is not a database"
        dst.unlink(missing_ok=True)
        shutil.copy2(src, dst)
        return
    shutil.copystat(src, dst)


class Periodic:
    """Copy the folder to the URI every ``interval`` seconds in a background thread (0: never);
    :meth:`stop` ends it between two files and waits for it."""

    def __init__(self, mirror: Mirror, interval: float) -> None:
        self.mirror, self.interval = mirror, interval
        self._stop = threading.Event()
        self._thread = None
        self._warned = False
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, name="evomerge-job-publish", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.mirror.publish(stop=self._stop)
            except Exception as err:  # noqa: BLE001 - the network, the store: tried again next time
                if not self._warned:
                    from evomerge.storage_uri import mask_uri

                    print(f"evomerge job: copying the run to {mask_uri(self.mirror.uri)} failed "
                          f"({mask_uri(str(err))}); trying again every "
                          f"{self.interval:g} s, and when the job ends", file=sys.stdout, flush=True)
                    self._warned = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
