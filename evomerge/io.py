"""Atomic output helpers and content hashing.

Every output evomerge writes goes through these helpers: the data is written to a temporary
sibling (``.NAME.tmp-<pid>-XXXX``) and renamed into place, so a crash never leaves a
half-written result behind. A folder output is written under an exclusive lock on the
destination (``.NAME.lock`` beside it), so of two runs writing one output exactly one wins; the
lock holder also removes temporary siblings that killed runs left. Failures to write (a
read-only or virtual file system, a full disk, a folder where a file belongs) raise
:class:`~evomerge.errors.OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from evomerge.errors import ConfigError, OutputError, OutputExistsError, cause_text, os_error_message

#: errno values that mean "the destination cannot take this output" (reported as OutputError).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
#: A temporary file of a dead process is removed once it is this old (seconds).
STALE_FILE_AGE_S = 60.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public_mode(path: str | os.PathLike, is_dir: bool) -> None:
    """tempfile creates 0600/0700 entries; give results the usual umask-based mode."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path) -> None:
    """Refuse (:class:`OutputError`, naming ``path``) an output that cannot be created where it
    will go: a temporary entry is created and removed in its nearest existing parent. For a
    command's output before any work is done, also one that continues a run (``--resume``)."""
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot create the output ({parent} is not a folder)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".evomerge-probe-", dir=parent))
    except OSError as err:
        reason = err.strerror or type(err).__name__  # not the probe's own name: the folder it was made in
        raise OutputError(f"{path}: cannot write here ({parent}: {reason})") from None


def check_output_path(path: str | os.PathLike, overwrite: bool, *, kind: str = "dir") -> Path:
    """Refuse an output that exists (unless ``overwrite``), that cannot be written, or that would
    replace the working folder or one of its parents; return the absolute path.

    ``kind="file"``: the output is a single file, so an existing folder there is refused.
    """
    raw = Path(path)
    path = _absolute(raw)
    if kind == "file" and path.is_dir():
        raise OutputError(f"{raw}: is a folder; name a file for this output")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{raw}: output already exists (pass --overwrite to replace it)")
    cwd = Path.cwd().resolve()
    if path.exists() and (path.resolve() == cwd or path.resolve() in cwd.parents):
        raise OutputError(f"{raw}: refusing to replace the current folder or one of its parents; pick another output")
    check_writable(path)
    return raw


def _enclosing_zoo(path: Path) -> Path | None:
    """The zoo folder (one holding ``zoo.json``) that ``path`` is or lies in, if any."""
    from evomerge.zoo.zoo import MANIFEST

    for d in (path, *path.parents):
        if (d / MANIFEST).is_file():
            return d
    return None


def path_relation(path: Path, place: Path) -> str | None:
    """How ``path`` stands to ``place`` (both resolved): "is", "is inside", "contains", or None
    when they do not overlap."""
    if path == place:
        return "is"
    if place in path.parents:
        return "is inside"
    if path in place.parents:
        return "contains"
    return None


def check_not_overlapping(out: str | os.PathLike, inputs, *, flag: str = "--out") -> None:
    """Refuse an output that is, contains or sits inside an input (``--overwrite`` would destroy
    it, or the command would write into it). ``inputs``: files and folders the command reads
    (experts, base, task/data files, zoo folders; None entries are skipped). An input inside a zoo
    folder (``zoo.json``) stands for its whole zoo: no output is written into a zoo that is read.
    Call it before any work; raises :class:`ConfigError` naming the output and the input."""
    o = _absolute(Path(out)).resolve()
    for p in inputs:
        if p is None:
            continue
        q = _absolute(Path(p)).resolve()
        zoo = _enclosing_zoo(q)
        for what, r in ((f"the input {p}", q), (f"the zoo {zoo} (input {p} lies in it)", zoo)):
            if r is not None and path_relation(o, r) is not None:
                raise ConfigError(f"{out}: the output overlaps {what}; inputs are never written, pick another {flag}")


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


@contextlib.contextmanager
def file_lock(lock: Path, *, blocking: bool = True, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` (created if needed, removed on release).

    ``blocking=True`` waits for another holder (the zoo build: parallel processes build once);
    ``blocking=False`` raises :class:`OutputError` with ``busy`` (an output being written by
    another run: exactly one wins). After a crash the kernel releases the lock and the file left
    behind is reused; a waiter that locked a file its holder then removed retries on the new one.
    """
    lock = Path(lock)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{lock}: cannot create the lock's folder ({os_error_message(err)})") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as err:
            raise OutputError(f"{lock}: cannot create the lock ({os_error_message(err, lock)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise OutputError(busy or f"{lock}: held by another process") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def output_lock_path(path: Path) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it."""
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the output lock of the run folder ``run_dir`` for a run that writes it piece by piece
    (``scale`` cell by cell, ``evolve`` round by round, so :func:`atomic_dir` cannot guard it): a
    second run into the same folder is refused at once instead of mixing its files with the first's.
    """
    run_dir = Path(run_dir).expanduser().resolve()  # one lock whatever the spelling (a symlink, ..)
    lock = output_lock_path(run_dir)
    with file_lock(lock, blocking=False, busy=(
            f"{run_dir}: another `evomerge {command}` is writing this run now (it holds {lock}); "
            "wait for it to end, or use another --out")):
        yield


def clean_stale(path: Path) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it (call with its output lock held).

    A ``.NAME.old-*`` folder holds the previous output when a run died between the two renames of
    a replacement: it is put back if ``path`` is missing, else removed.
    """
    removed = []
    for old in sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*")):
        if not path.exists():
            os.replace(old, path)
            continue
        _remove(old)
        removed.append(old)
    for tmp in sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*")):
        _remove(tmp)
        removed.append(tmp)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _as_output_error(err: BaseException, path: Path) -> BaseException:
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        return OutputError(f"{path}: cannot write the output ({os_error_message(err)})")
    return err


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    The destination is locked for the whole block; stale temporaries of ``path`` are removed
    first; whether ``path`` exists is checked again under the lock.
    """
    path = _absolute(check_output_path(path, overwrite))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot create the output folder ({os_error_message(err)})") from None
    lock = output_lock_path(path)
    with file_lock(lock, blocking=False,
                   busy=f"{path}: another evomerge process is writing this output now (lock {lock.name})"):
        clean_stale(path)
        check_output_path(path, overwrite)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
            _public_mode(tmp, is_dir=True)
        except OSError as err:
            raise OutputError(f"{path}: cannot write the output ({os_error_message(err)})") from None
        try:
            yield tmp
            if path.exists():
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            converted = _as_output_error(err, path)
            if isinstance(converted, OutputError):  # name the output, not its temporary folder
                converted = OutputError(str(converted).replace(str(tmp), str(path)))
            elif converted is err:
                raise
            raise converted from None


@contextlib.contextmanager
def removed_if_failed(path: str | os.PathLike) -> Iterator[None]:
    """Remove the folder ``path`` again if the block fails and the folder is new and still empty
    (a run refused by validation leaves no empty output folder behind)."""
    path = Path(path)
    existed = path.exists()
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if not existed and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def _clean_stale_files(path: Path) -> None:
    """Remove ``.NAME.tmp-<pid>-*`` files of processes that are gone (and old enough)."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name[len(f".{path.name}.tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if tmp.is_file() and now - tmp.stat().st_mtime > STALE_FILE_AGE_S:
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it into place on success."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_files(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
        _public_mode(tmp, is_dir=False)
    except OSError as err:
        raise OutputError(f"{path}: cannot write the output ({os_error_message(err)})") from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        converted = _as_output_error(err, path)
        if converted is err:
            raise
        raise converted from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)


def write_parquet_atomic(path: str | os.PathLike, table) -> None:
    """Write a ``pyarrow.Table`` atomically."""
    import pyarrow.parquet as pq

    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` with the usual umask mode, and write failures (full disk, ...)
    as one :class:`OutputError`."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
        _public_mode(path, is_dir=False)  # safetensors may create the file 0600
    except OSError as err:
        raise _as_output_error(err, Path(path)) from None
    except Exception as err:  # safetensors wraps I/O errors in its own type
        if "os error" in str(err).lower() or "ioerror" in str(err).lower():
            raise OutputError(f"{path}: cannot write the output ({cause_text(err)})") from None
        raise


def save_png_atomic(fig, path: str | os.PathLike, *, tight_bbox: bool = True, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically; the one way evomerge saves figures."""
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight_bbox else {}))
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike, recursive: bool = True) -> str:
    """Content hash of a file, or of every file under a directory (names included).
    ``recursive=False``: only the files directly in the directory, the ones a model, adapter or
    task loader reads (a trainer's ``checkpoint-*/`` subfolders, gigabytes of optimizer state, are
    never read, so not hashed); equal to the recursive hash for a folder without subfolders."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def jsonable(obj):
    """``obj`` with NaN/inf as None (they are not JSON) and numpy scalars as Python numbers."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return jsonable(obj.item())
    return obj
