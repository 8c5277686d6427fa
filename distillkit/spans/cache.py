"""A disk cache of parsed spans, shared safely by parallel jobs (DESIGN.md principle 2: parse once).

Layout: one JSON shard per parser configuration, ``<root>/<parser name>-<hash of name, settings,
version, shard format>.json``, mapping each text's key ``stable_hash(text, name, settings, version)``
to its spans as columns ``[[starts], [ends], "kind codes"]`` (a letter per span: w/n/v/a). A lookup reads the shard (no lock: shards are replaced atomically),
parses only the misses in ONE batched ``parser.parse`` call, then, under the shard's file lock,
re-reads the shard, merges the new entries and writes it back atomically — so two multirun jobs
filling the same shard never lose each other's work.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillkit.spans.parsers import SpanParser
from distillkit.types import CharSpan
from distillkit.utils.io import atomic_write_text, cache_dir, locked, stable_hash


@dataclass
class CacheStats:
    """Hits, misses and ``parser.parse`` calls (unique texts; repeated texts in one call count once)."""

    hits: int = 0
    misses: int = 0
    parse_calls: int = 0

    def add(self, other: CacheStats) -> None:
        self.hits += other.hits
        self.misses += other.misses
        self.parse_calls += other.parse_calls


@dataclass
class SpanReport:
    """What a batch of parsed texts looked like: the texts that give a method nothing to work with."""

    texts: int = 0
    empty_texts: int = 0  # blank after stripping whitespace
    without_spans: int = 0  # no span at all
    without_phrases: int = 0  # no NP and no VP
    spans_by_kind: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "empty_texts": self.empty_texts,
            "without_spans": self.without_spans,
            "without_phrases": self.without_phrases,
            "spans_by_kind": dict(self.spans_by_kind),
        }


def parse_stats(texts: list[str], spans: list[list[CharSpan]]) -> SpanReport:
    """Count empty texts, texts with no span and texts with no NP/VP (never raises on odd input)."""
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} span lists")
    report = SpanReport(texts=len(texts))
    for text, text_spans in zip(texts, spans):
        report.empty_texts += int(not text.strip())
        report.without_spans += int(not text_spans)
        report.without_phrases += int(not any(s.kind in ("np", "vp") for s in text_spans))
        report.spans_by_kind.update(s.kind for s in text_spans)
    return report


#: One character per span kind in the shard (a shard stores ``[starts, ends, kind codes]`` per text:
#: half the size of ``[[start, end, kind], ...]`` and twice as fast to load).
_KIND_CODES = {"word": "w", "np": "n", "vp": "v", "aligned": "a"}
_CODE_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
#: Bump when the shard layout changes (it is part of the shard's name).
SHARD_FORMAT = 2


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects.

    Decoding a shard creates ~150 ``CharSpan`` per text; with the collector on, its repeated scans
    of the whole heap (torch, transformers...) cost twice the decoding itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _encode(spans: list[CharSpan]) -> list[Any]:
    unknown = {s.kind for s in spans} - _KIND_CODES.keys()
    if unknown:
        raise ValueError(
            f"span kinds {sorted(unknown)} cannot be cached; valid kinds: {', '.join(_KIND_CODES)}"
        )
    return [[s.start for s in spans], [s.end for s in spans], "".join(_KIND_CODES[s.kind] for s in spans)]


def _decode(entry: list[Any]) -> list[CharSpan]:
    starts, ends, codes = entry
    return [CharSpan(a, b, _CODE_KINDS[c]) for a, b, c in zip(starts, ends, codes)]


class SpanCache:
    """Parsed spans on disk, keyed by text and parser configuration.

    ``root`` defaults to ``cache_dir() / "spans"``. ``stats`` accumulates over calls; ``last_stats``
    and ``last_report`` describe the latest :meth:`get_or_parse`.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "spans"
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = CacheStats()
        self.last_stats = CacheStats()
        self.last_report = SpanReport()
        self._shards: dict[Path, tuple[int, dict[str, list]]] = {}  # path -> (mtime, entries)

    def shard_path(self, parser: SpanParser) -> Path:
        """The shard file of this parser configuration."""
        key = stable_hash(parser.name, parser.settings(), parser.version(), SHARD_FORMAT)
        return self.root / f"{parser.name}-{key}.json"

    def _read(self, path: Path) -> dict[str, list]:
        """The shard's entries, re-read only when the file changed since the last read."""
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._shards.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        with open(path, encoding="utf-8") as fh, _gc_paused():
            entries = json.load(fh)
        self._shards[path] = (mtime, entries)
        return entries

    def get_or_parse(self, parser: SpanParser, texts: list[str]) -> list[list[CharSpan]]:
        """Spans of each text (input order), parsing only the texts not cached yet, in one batched call."""
        name, settings, version = parser.name, parser.settings(), parser.version()
        keys = [stable_hash(text, name, settings, version) for text in texts]
        path = self.shard_path(parser)
        entries = self._read(path)

        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in entries and key not in missing:
                missing[key] = text
        stats = CacheStats(hits=len(set(keys)) - len(missing), misses=len(missing))

        new: dict[str, list] = {}
        if missing:
            parsed = parser.parse(list(missing.values()))
            stats.parse_calls = 1
            if len(parsed) != len(missing):
                raise RuntimeError(f"{parser!r} returned {len(parsed)} span lists for {len(missing)} texts")
            new = {key: _encode(spans) for key, spans in zip(missing, parsed)}
            with locked(path):
                merged = dict(self._read(path))  # another job may have written since we looked
                merged.update(new)
                atomic_write_text(path, json.dumps(merged, ensure_ascii=False, separators=(",", ":")))
                self._shards[path] = (path.stat().st_mtime_ns, merged)
            entries = merged

        with _gc_paused():
            result = [_decode(entries[key]) for key in keys]
        self.last_stats = stats
        self.stats.add(stats)
        self.last_report = parse_stats(texts, result)
        return result
