"""Small file-system helpers shared by every part of distillkit.

Everything a user makes (results, caches, exported models) is written atomically:
to a temporary file in the same folder, then ``os.replace``d into place, so a crash
never leaves half a file. Caches shared by parallel multirun jobs are guarded by
a file lock (``filelock``) beside the cached file; a job that has to wait for it says so, naming
the cache entry and the process that holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from distillkit.errors import DataError

log = logging.getLogger("distillkit")

CACHE_ENV = "DISTILLKIT_CACHE"
DATA_ROOT_ENV = "DISTILLKIT_DATA_ROOT"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The one cache folder: ``override``, else ``$DISTILLKIT_CACHE``, else ``~/.cache/distillkit``."""
    path = Path(override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distillkit")
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root (a folder laid out like MiniLLM/DSKD ``data/``): ``override`` or ``$DISTILLKIT_DATA_ROOT``."""
    value = override or os.environ.get(DATA_ROOT_ENV)
    if not value:
        raise DataError(
            f"No data root: set data.root=PATH or the environment variable {DATA_ROOT_ENV} "
            "to a folder laid out like MiniLLM/DSKD data/ (dolly/, self-inst/, vicuna/, sinst/, uinst/)."
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"Data root {str(path)!r} is not a folder (data.root / ${DATA_ROOT_ENV}).")
    return path


def _holder_file(path: Path) -> Path:
    return Path(str(path) + ".lock.holder")


def lock_holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock of ``path`` (``pid <n> on <host>``), as its holder wrote it; None if unknown."""
    try:
        text = _holder_file(Path(path)).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """Hold an inter-process lock named after ``path`` (``<path>.lock``).

    The holder writes ``pid <pid> on <host>`` into the sidecar ``<path>.lock.holder`` (removed on
    release); a process that has to wait logs ``waiting for the lock on <path> held by <holder>``
    once, then waits up to ``timeout`` seconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=timeout)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = lock_holder(path) or "another process (holder unknown)"
        log.info("waiting for the lock on %s held by %s", path, holder)
        lock.acquire(timeout=timeout)
    holder_file = _holder_file(path)
    try:
        with contextlib.suppress(OSError):
            holder_file.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n", encoding="utf-8")
        yield
    finally:
        with contextlib.suppress(OSError):
            holder_file.unlink()
        lock.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``: a reader
    sees the old file or the new one, never half of one. The file gets the permissions a plain ``open``
    would give it (``0o666`` less the umask; ``mkstemp`` alone makes it ``0o600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(*parts: Any) -> str:
    """A short, stable hex digest of JSON-serialisable parts (cache keys)."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:24]


def read_jsonl(
    path: str | os.PathLike, on_bad_rows: str = "fail", bad_lines: list[int] | None = None
) -> list[dict]:
    """The JSON values of a JSONL file, one per non-blank line.

    A line that is not valid JSON raises :class:`~distillkit.errors.DataError` naming the file, the
    line number and the parser's complaint (``on_bad_rows="fail"``), or is logged and skipped
    (``"skip"``); the numbers of skipped lines are appended to ``bad_lines`` when given.
    """
    mode = str(getattr(on_bad_rows, "value", on_bad_rows))
    if mode not in ("fail", "skip"):
        raise ValueError(f"on_bad_rows={mode!r}; valid: fail, skip")
    rows, skipped = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                where = f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})"
                if mode == "fail":
                    raise DataError(
                        f"{where}; fix the line, or set data.on_bad_rows=skip to drop such lines (counted)"
                    ) from None
                skipped.append(lineno)
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        log.warning("%s: skipped %d line(s) that are not valid JSON (lines %s)", path, len(skipped), shown)
        if bad_lines is not None:
            bad_lines.extend(skipped)
    return rows
