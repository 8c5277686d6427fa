"""Vocabulary maps between a teacher's and a student's tokenizer, computed once per pair and cached.

Every map is a teacher-id -> student-id table ``t2s`` (a LongTensor of length ``len(teacher_tokenizer)``,
``-1`` = unmapped) over the ids ``< len(tokenizer)`` of both sides: Qwen's embedding has more rows
than its tokenizer has tokens, and those rows are never mapped. The kinds (:class:`VocabKind`):

``exact``
    A teacher token maps to the student token with the identical string (SRA; GOLD's hybrid ULD).
``space``
    Identical strings once both space markers are written the same way (``Ġ`` -> ``▁``, so GPT-2's
    ``Ġthe`` matches Llama's ``▁the``): DSKDv2's overlap vocabulary (``distiller.py::projector_init``),
    used for ETA's pseudo-inverse init and, here, for its "teacher prediction -> student label" table.
``bytes``
    Identical byte strings: byte-level BPE pieces are decoded through GPT-2's byte table (``Ã©`` is
    ``é``, ``Ġ`` a space), SentencePiece's ``▁`` is a space and ``<0xNN>`` the byte it names. When
    several tokens of one side spell the same bytes, a regular piece wins over a byte-fallback one,
    then the smaller id.
``mined``
    FuseLLM's minimum-edit-distance map, as MinED uses it (ctkd.md §3.2; FuseLLM ``vocab_mapping.py``):
    the teacher string with the teacher's space marker replaced by the student's; if that string is a
    student token it maps there, else to the student token whose lower-cased string is at the smallest
    Levenshtein distance from the lower-cased teacher string. Every regular teacher token is mapped.
    Ties go to the smallest student id (FuseLLM takes the first in its vocabulary dict's order, which
    is not defined for fast tokenizers). The search runs in ``rapidfuzz``'s ``cdist`` over all cores,
    on the distinct lower-cased strings of both sides, in chunks: 151,646 x 50,257 (Qwen2 -> GPT-2)
    takes about 50 CPU-seconds
    (89,330 distinct strings left after the exact step; 43,269 distinct GPT-2 ids are hit, DSKD's
    ``qwen_to_gpt2`` file has 43,262).

Special tokens (the tokenizer's special ids) are never matched by string against regular tokens, in
any kind: the teacher's EOS maps to the student's EOS, another teacher special maps to the student
special with the same string, else it is unmapped; a regular teacher token never maps to a student
special. So a string outside the student vocabulary is ``-1``, never the student's ``unk``/EOS
(DSKDv2's ``convert_tokens_to_ids`` returns ``unk`` there, which is GPT-2's EOS: ctkd.md §3.5 pitfall 1).

Maps are cached under ``<cache_dir>/vocab/`` keyed by the kind and both vocabularies' hashes (ids,
strings and special ids), written atomically under a file lock; a second call reads the cache. Build
them ahead of time with::

    python -m distillkit.vocab build --teacher PATH --student PATH [--kind mined] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distillkit.spans.align import _BYTE_LEVEL
from distillkit.utils.io import atomic_write_bytes, cache_dir, locked, stable_hash

__all__ = [
    "Vocab",
    "VocabKind",
    "VocabMap",
    "main",
    "overlap_ids",
    "require_overlap",
    "teacher_to_student_lut",
    "token_bytes",
    "vocab_map",
    "vocab_of",
]

#: Bump when a map's definition changes, so old cached maps are not reused.
MAP_VERSION = 1
SPACE_MARKERS = ("Ġ", "▁")


class VocabKind(str, Enum):
    """How teacher tokens are matched to student tokens (see the module docstring)."""

    EXACT = "exact"
    SPACE = "space"
    BYTES = "bytes"
    MINED = "mined"


def _kind(kind: VocabKind | str) -> VocabKind:
    try:
        return VocabKind(kind)
    except ValueError:
        raise ValueError(
            f"vocabulary map kind {kind!r} is not valid; choose one of {[k.value for k in VocabKind]}"
        ) from None


# ----------------------------------------------------------------------------- one vocabulary
@dataclass(frozen=True)
class Vocab:
    """One tokenizer's vocabulary as distillkit sees it: ids ``0 .. len(tokenizer) - 1``.

    ``tokens[i]`` is id ``i``'s string (``""`` for an id the tokenizer has no token for), ``special``
    the special ids (never matched to regular tokens), ``byte_level`` whether the regular tokens are
    byte-level BPE strings (GPT-2's 256 printable stand-ins only), ``hash`` a digest of all of it.
    """

    name: str
    tokens: tuple[str, ...]
    special: frozenset[int]
    eos: int | None
    byte_level: bool
    hash: str

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def marker(self) -> str:
        """The space marker of this vocabulary's strings: ``Ġ`` (byte-level BPE) or ``▁`` (SentencePiece)."""
        return "Ġ" if self.byte_level else "▁"

    def is_regular(self, i: int) -> bool:
        return i not in self.special and bool(self.tokens[i])


def vocab_of(tokenizer: Any) -> Vocab:
    """The :class:`Vocab` of an HF tokenizer (a :class:`Vocab` is returned as it is)."""
    if isinstance(tokenizer, Vocab):
        return tokenizer
    n = len(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    tokens = tuple("" if t is None else str(t) for t in raw)
    special = {int(i) for i in tokenizer.all_special_ids if i is not None and 0 <= int(i) < n}
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False) and 0 <= int(i) < n:
            special.add(int(i))
    eos = tokenizer.eos_token_id
    eos = int(eos) if eos is not None and 0 <= int(eos) < n else None
    regular_chars = set("".join(t for i, t in enumerate(tokens) if i not in special))
    byte_level = bool(regular_chars) and regular_chars <= _BYTE_LEVEL.keys()
    digest = stable_hash("distillkit-vocab", tokens, sorted(special), eos)
    return Vocab(
        name=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        tokens=tokens,
        special=frozenset(special),
        eos=eos,
        byte_level=byte_level,
        hash=digest,
    )


def token_bytes(token: str, byte_level: bool) -> bytes:
    """The bytes a token string stands for, spaces kept (``Ġthe`` and ``▁the`` are both ``b" the"``).

    Byte-level BPE strings go back through GPT-2's byte table; SentencePiece strings have ``▁`` as a
    space and ``<0xNN>`` byte-fallback pieces. Unlike ``spans.align.normalize_token`` (which drops
    spaces to compare pieces of one text), the space stays: ``the`` and `` the`` are different tokens.
    """
    if byte_level and all(ch in _BYTE_LEVEL for ch in token):
        return bytes(_BYTE_LEVEL[ch] for ch in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("▁", " ").encode("utf-8")


def _is_byte_fallback(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


# ----------------------------------------------------------------------------- the map
@dataclass
class VocabMap:
    """A teacher-id -> student-id map of one :class:`VocabKind`.

    ``t2s[t]`` is the student id of teacher id ``t`` (``-1`` = unmapped), ``exact[t]`` whether it was
    matched by (kind-normalized) string equality, ``distance[t]`` the lower-cased edit distance of a
    ``mined`` match (0 for exact matches, ``-1`` where unmapped).
    """

    kind: VocabKind
    teacher: str
    student: str
    teacher_hash: str
    student_hash: str
    student_size: int
    t2s: Tensor  # (V_teacher,) long
    exact: Tensor  # (V_teacher,) bool
    distance: Tensor  # (V_teacher,) int32
    restricted: int | None = None  # number of teacher ids asked for, when restricted
    build_seconds: float = 0.0

    @property
    def teacher_size(self) -> int:
        return int(self.t2s.shape[0])

    def stu2tea(self, exact_only: bool = False) -> Tensor:
        """Student id -> the smallest teacher id mapped to it (``-1`` = none), ``(V_student,)`` long.

        MinED's ``stu2tea`` with ``max_align_num = 1`` (DSKD ``distiller.py``: the first teacher id in
        the mapping file's key order, which runs over ascending ids).
        """
        keep = self.t2s.ge(0) & (self.exact if exact_only else True)
        t_ids = torch.nonzero(keep).squeeze(1)
        s_ids = self.t2s[t_ids]
        out = torch.full((self.student_size,), self.teacher_size, dtype=torch.long)
        out.scatter_reduce_(0, s_ids, t_ids, reduce="amin")
        return torch.where(out.eq(self.teacher_size), -1, out)

    def overlap(self) -> tuple[Tensor, Tensor]:
        """The 1:1 overlap ``(student_ids, teacher_ids)``, ascending in the student id: every student
        id with an exact (kind-normalized) teacher match, paired with the smallest such teacher id."""
        s2t = self.stu2tea(exact_only=True)
        s_ids = torch.nonzero(s2t.ge(0)).squeeze(1)
        return s_ids, s2t[s_ids]

    @property
    def overlap_size(self) -> int:
        return int(self.stu2tea(exact_only=True).ge(0).sum())

    @property
    def overlap_fraction(self) -> float:
        """The overlap's size over the smaller vocabulary's size."""
        return self.overlap_size / max(1, min(self.teacher_size, self.student_size))

    def summary(self) -> dict[str, Any]:
        mapped = self.t2s.ge(0)
        dist = self.distance[mapped & ~self.exact]
        return {
            "kind": self.kind.value,
            "teacher": self.teacher,
            "student": self.student,
            "teacher_size": self.teacher_size,
            "student_size": self.student_size,
            "restricted_to": self.restricted,
            "mapped_teacher_ids": int(mapped.sum()),
            "exact_teacher_ids": int(self.exact.sum()),
            "distinct_student_ids": int(torch.unique(self.t2s[mapped]).numel()),
            "overlap": self.overlap_size,
            "overlap_fraction": round(self.overlap_fraction, 4),
            "mean_edit_distance_inexact": round(float(dist.float().mean()), 3) if dist.numel() else 0.0,
            "build_seconds": round(self.build_seconds, 2),
        }

    # ---- storage
    def to_bytes(self) -> bytes:
        meta = {
            "kind": self.kind.value,
            "teacher": self.teacher,
            "student": self.student,
            "teacher_hash": self.teacher_hash,
            "student_hash": self.student_hash,
            "student_size": self.student_size,
            "restricted": self.restricted,
            "build_seconds": self.build_seconds,
            "version": MAP_VERSION,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            t2s=self.t2s.numpy(),
            exact=self.exact.numpy(),
            distance=self.distance.numpy(),
            meta=np.array(json.dumps(meta)),
        )
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> VocabMap:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                kind=VocabKind(meta["kind"]),
                teacher=meta["teacher"],
                student=meta["student"],
                teacher_hash=meta["teacher_hash"],
                student_hash=meta["student_hash"],
                student_size=int(meta["student_size"]),
                t2s=torch.from_numpy(data["t2s"].astype(np.int64)),
                exact=torch.from_numpy(data["exact"].astype(bool)),
                distance=torch.from_numpy(data["distance"].astype(np.int32)),
                restricted=meta["restricted"],
                build_seconds=float(meta["build_seconds"]),
            )


# ----------------------------------------------------------------------------- building
def _key_fn(kind: VocabKind, vocab: Vocab) -> Callable[[str], Any]:
    if kind is VocabKind.EXACT:
        return lambda tok: tok
    if kind is VocabKind.SPACE:
        return lambda tok: tok.replace("Ġ", "▁")
    if kind is VocabKind.BYTES:
        return lambda tok: token_bytes(tok, vocab.byte_level)
    raise AssertionError(kind)


def _student_index(student: Vocab, key: Callable[[str], Any]) -> dict[Any, int]:
    """Key -> student id over regular tokens: regular pieces before byte-fallback ones, then smallest id."""
    index: dict[Any, int] = {}
    fallback: list[int] = []
    for i, tok in enumerate(student.tokens):
        if not student.is_regular(i):
            continue
        if _is_byte_fallback(tok):
            fallback.append(i)
            continue
        index.setdefault(key(tok), i)
    for i in fallback:
        index.setdefault(key(student.tokens[i]), i)
    return index


def _map_specials(
    teacher: Vocab, student: Vocab, t2s: np.ndarray, exact: np.ndarray, asked: np.ndarray
) -> None:
    by_string = {student.tokens[i]: i for i in sorted(student.special)}
    for t in teacher.special:
        if not asked[t]:
            continue
        if t == teacher.eos and student.eos is not None:
            s = student.eos
        else:
            s = by_string.get(teacher.tokens[t], -1)
        t2s[t], exact[t] = s, s >= 0


def _asked(teacher: Vocab, teacher_ids: Sequence[int] | None) -> np.ndarray:
    asked = np.zeros(len(teacher), dtype=bool)
    if teacher_ids is None:
        asked[:] = True
        return asked
    ids = np.asarray(list(teacher_ids), dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= len(teacher))]
    if bad.size:
        raise ValueError(
            f"teacher_ids {bad[:5].tolist()} are outside the teacher vocabulary (valid: 0..{len(teacher) - 1})"
        )
    asked[ids] = True
    return asked


def _exact_part(
    teacher: Vocab, student: Vocab, key_t: Callable[[str], Any], index: dict[Any, int], asked: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    t2s = np.full(len(teacher), -1, dtype=np.int64)
    exact = np.zeros(len(teacher), dtype=bool)
    for t, tok in enumerate(teacher.tokens):
        if asked[t] and teacher.is_regular(t):
            s = index.get(key_t(tok))
            if s is not None:
                t2s[t], exact[t] = s, True
    _map_specials(teacher, student, t2s, exact, asked)
    return t2s, exact


def _mined_keys(teacher: Vocab, student: Vocab) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """FuseLLM's exact step: the teacher's space marker written as the student's, case kept."""
    t_marker, s_marker = teacher.marker, student.marker
    if t_marker == s_marker:
        return (lambda tok: tok), (lambda tok: tok)
    return (lambda tok: tok.replace(t_marker, s_marker)), (lambda tok: tok)


def _nearest(
    queries: list[str],
    choices: list[str],
    workers: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the index of the first choice at the minimum Levenshtein distance, and that distance.

    ``rapidfuzz.process.cdist`` computes a chunk of queries against every choice in C++ over
    ``workers`` threads; the chunk is sized so that one ``(chunk, len(choices))`` int32 matrix stays
    near 100 MB. Queries are sorted by length first so a chunk holds strings of similar length.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    best = np.zeros(len(queries), dtype=np.int64)
    dist = np.zeros(len(queries), dtype=np.int32)
    if not queries or not choices:
        return best, dist
    order = np.argsort([len(q) for q in queries], kind="stable")
    chunk = max(16, min(8192, 25_000_000 // len(choices)))
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        matrix = process.cdist(
            [queries[i] for i in rows], choices, scorer=Levenshtein.distance, dtype=np.int32, workers=workers
        )
        arg = matrix.argmin(axis=1)  # the first minimum: choices are in ascending student-id order
        best[rows] = arg
        dist[rows] = matrix[np.arange(len(rows)), arg]
        if progress is not None:
            progress(min(start + chunk, len(order)), len(order))
    return best, dist


def _build(
    teacher: Vocab,
    student: Vocab,
    kind: VocabKind,
    teacher_ids: Sequence[int] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VocabMap:
    """Compute a map (no cache). See the module docstring for each kind's rule."""
    start = time.perf_counter()
    asked = _asked(teacher, teacher_ids)
    if kind is VocabKind.MINED:
        key_t, key_s = _mined_keys(teacher, student)
    else:
        key_t, key_s = _key_fn(kind, teacher), _key_fn(kind, student)
    t2s, exact = _exact_part(teacher, student, key_t, _student_index(student, key_s), asked)
    distance = np.where(t2s >= 0, 0, -1).astype(np.int32)

    if kind is VocabKind.MINED:
        # distinct lower-cased student strings, each with its smallest id, in ascending id order
        lowered: dict[str, int] = {}
        for s, tok in enumerate(student.tokens):
            if student.is_regular(s):
                lowered.setdefault(tok.lower(), s)
        choices = list(lowered)
        choice_ids = np.fromiter(lowered.values(), dtype=np.int64, count=len(lowered))
        todo = [t for t in range(len(teacher)) if asked[t] and teacher.is_regular(t) and t2s[t] < 0]
        pending: dict[str, list[int]] = {}
        for t in todo:
            q = key_t(teacher.tokens[t]).lower()
            s = lowered.get(q)
            if s is not None:  # equal once lower-cased: distance 0, the smallest such id
                t2s[t], distance[t] = s, 0
            else:
                pending.setdefault(q, []).append(t)
        queries = list(pending)
        best, dist = _nearest(queries, choices, workers or os.cpu_count() or 1, progress)
        for q, b, d in zip(queries, best.tolist(), dist.tolist()):
            for t in pending[q]:
                t2s[t], distance[t] = choice_ids[b], d

    return VocabMap(
        kind=kind,
        teacher=teacher.name,
        student=student.name,
        teacher_hash=teacher.hash,
        student_hash=student.hash,
        student_size=len(student),
        t2s=torch.from_numpy(t2s),
        exact=torch.from_numpy(exact),
        distance=torch.from_numpy(distance),
        restricted=None if teacher_ids is None else int(asked.sum()),
        build_seconds=time.perf_counter() - start,
    )


def _cache_path(teacher: Vocab, student: Vocab, kind: VocabKind, teacher_ids, cache_root) -> Path:
    ids = None if teacher_ids is None else sorted({int(i) for i in teacher_ids})
    key = stable_hash(MAP_VERSION, kind.value, teacher.hash, student.hash, ids)
    return cache_dir(cache_root) / "vocab" / f"{kind.value}-{teacher.hash[:12]}-{student.hash[:12]}-{key}.npz"


def require_overlap(vmap: VocabMap, min_fraction: float, key: str) -> None:
    """Fail when the map's exact overlap is below ``min_fraction`` of the smaller vocabulary.

    The message names ``key`` (the config key that sets ``min_fraction``) so the user knows what to change.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"{key}={min_fraction!r} must lie in [0, 1] (a fraction of the smaller vocabulary)")
    if vmap.overlap_fraction < min_fraction:
        raise ValueError(
            f"The {vmap.kind.value!r} vocabulary overlap of teacher {vmap.teacher!r} and student "
            f"{vmap.student!r} is {vmap.overlap_size} tokens ({vmap.overlap_fraction:.1%} of the smaller "
            f"vocabulary), below {key}={min_fraction}. Lower {key}, pick another vocabulary map kind "
            f"(valid: {[k.value for k in VocabKind]}), or use a pair whose tokenizers share more tokens."
        )


def vocab_map(
    teacher: Any,
    student: Any,
    kind: VocabKind | str = VocabKind.MINED,
    *,
    teacher_ids: Sequence[int] | None = None,
    workers: int | None = None,
    cache_root: str | os.PathLike | None = None,
    use_cache: bool = True,
    min_overlap: float | None = None,
    key: str = "min_vocab_overlap",
    progress: Callable[[int, int], None] | None = None,
) -> VocabMap:
    """The ``kind`` map from the ``teacher`` tokenizer to the ``student`` one, from the cache or built once.

    ``teacher``/``student`` are HF tokenizers or :class:`Vocab`\\ s. ``teacher_ids`` restricts the map to
    those teacher ids (the others stay unmapped; for tests and previews, cached under their own key).
    ``workers``: threads of the ``mined`` search (default: all cores). ``min_overlap``: fail (before
    the expensive ``mined`` search) when the exact overlap is below this fraction of the smaller
    vocabulary, naming ``key`` (:func:`require_overlap`).
    """
    kind = _kind(kind)
    t_vocab, s_vocab = vocab_of(teacher), vocab_of(student)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers={workers!r} must be a positive int (threads of the edit-distance search)")

    def build() -> VocabMap:
        if min_overlap is not None and kind is VocabKind.MINED:
            key_t, key_s = _mined_keys(t_vocab, s_vocab)
            asked = _asked(t_vocab, teacher_ids)
            t2s, exact = _exact_part(t_vocab, s_vocab, key_t, _student_index(s_vocab, key_s), asked)
            cheap = VocabMap(
                kind, t_vocab.name, s_vocab.name, t_vocab.hash, s_vocab.hash, len(s_vocab),
                torch.from_numpy(t2s), torch.from_numpy(exact), torch.zeros(len(t2s), dtype=torch.int32),
            )  # fmt: skip
            require_overlap(cheap, min_overlap, key)
        return _build(t_vocab, s_vocab, kind, teacher_ids, workers, progress)

    if not use_cache:
        vmap = build()
    else:
        path = _cache_path(t_vocab, s_vocab, kind, teacher_ids, cache_root)
        with locked(path):
            if path.exists():
                vmap = VocabMap.from_file(path)
            else:
                vmap = build()
                atomic_write_bytes(path, vmap.to_bytes())
    if min_overlap is not None:
        require_overlap(vmap, min_overlap, key)
    return vmap


def overlap_ids(
    teacher: Any, student: Any, kind: VocabKind | str = VocabKind.SPACE, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """The shared vocabulary as ``(student_ids, teacher_ids)`` (1:1, ascending student id; cached map)."""
    return vocab_map(teacher, student, kind, **kwargs).overlap()


def teacher_to_student_lut(
    teacher: Any, student: Any, kind: VocabKind | str = VocabKind.SPACE, **kwargs: Any
) -> Tensor:
    """Teacher id -> student id, ``(len(teacher),)`` long, ``-1`` where the teacher token has no
    counterpart (never the student's ``unk``/EOS for an out-of-vocabulary string). Default ``space``
    (DSKDv2's overlap: ``Ġ`` == ``▁``); EOS maps to EOS."""
    return vocab_map(teacher, student, kind, **kwargs).t2s


# ----------------------------------------------------------------------------- CLI
def _cli() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m distillkit.vocab", description="Build and cache vocabulary maps."
    )
    sub = cli.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="build (or read from the cache) one teacher -> student map and print its summary"
    )
    b.add_argument(
        "--teacher", required=True, help="teacher tokenizer: a folder, an HF id or tiny:<kind>:<vocab>"
    )
    b.add_argument(
        "--student", required=True, help="student tokenizer: a folder, an HF id or tiny:<kind>:<vocab>"
    )
    b.add_argument(
        "--kind", default="mined", choices=[k.value for k in VocabKind], help="map kind (default: mined)"
    )
    b.add_argument(
        "--workers", type=int, default=None, help="threads of the mined search (default: all cores)"
    )
    b.add_argument(
        "--cache-dir", default=None, help="cache root (default: $DISTILLKIT_CACHE or ~/.cache/distillkit)"
    )
    b.add_argument("--no-cache", action="store_true", help="build without reading or writing the cache")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = _cli().parse_args(argv)
    from distillkit.models.pair import ModelLoadError, load_tokenizer

    try:
        teacher = load_tokenizer(args.teacher, "teacher", args.cache_dir)
        student = load_tokenizer(args.student, "student", args.cache_dir)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    shown = [-1]

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // max(1, total)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"mined search: {done}/{total} distinct teacher strings", file=sys.stderr, flush=True)

    try:
        vmap = vocab_map(
            teacher, student, args.kind, workers=args.workers, cache_root=args.cache_dir,
            use_cache=not args.no_cache, progress=progress,
        )  # fmt: skip
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(vmap.summary(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
