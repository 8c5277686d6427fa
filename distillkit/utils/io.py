"""Small file-system helpers shared by every part of distillkit.

Everything a user makes (results, caches, exported models) is written atomically:
to a temporary file in the same folder, then ``os.replace``d into place, so a crash
never leaves half a file. Caches shared by parallel multirun jobs are guarded by
a file lock (``filelock``) beside the cached file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

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
        raise FileNotFoundError(
            f"No data root: set data.root=PATH or the environment variable {DATA_ROOT_ENV} "
            "to a folder laid out like MiniLLM/DSKD data/ (dolly/, self-inst/, vicuna/, sinst/, uinst/)."
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Data root {str(path)!r} is not a folder (data.root / ${DATA_ROOT_ENV}).")
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """Hold an inter-process lock named after ``path`` (``<path>.lock``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows
