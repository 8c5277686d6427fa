"""1:1 token pairs between the two tokenizations of an example, computed once in data preparation.

Both alignments return ``[(student_position, teacher_position), ...]`` (the format of
``Example.pairs[name]``): positions index each side's ``input_ids``, ascending in both coordinates.
Labels are shifted (``labels[p]`` is the token ``logits[p]`` predicts, ``-100`` outside response + EOS),
so the *response-label positions* of a side are the ``p`` with ``labels[p] != -100``: the last prompt
token up to the last response token.

:func:`mined_pairs` (MinED; DSKD ``min_edit_dis_kld.py::transform_step_logits_fast``, ctkd.md §3.2)
    The *input* tokens at the response-label positions of each side, compared by the edit distance of
    their strings with the space markers ``Ġ``/``▁`` removed, aligned by dynamic time warping
    (:func:`dtw_path`). A student position whose warping path visits exactly one teacher position is
    paired with it; this is DSKD's "1:1" test, made on the student side only (a teacher token may
    serve two student tokens). With ``tea2stu`` (the MinED vocabulary map) a pair is kept only when the
    student input id equals ``tea2stu[teacher input id]`` (DSKD's second test). The reference runs its
    pure-Python DTW in every training step; here it runs once per example (the cost matrix in
    ``rapidfuzz``'s C++, the DP one numpy row at a time).

:func:`eta_pairs` (DSKDv2-ETA; ``align_sequences``, ctkd.md §3.5)
    The response *label* tokens of each side aligned 1:1 where both tokenizations have the same token
    at the same place, plus the final EOS label paired with the final EOS label. DSKDv2's greedy walk,
    on bytes: a token is compared as the bytes it stands for (:func:`distillkit.vocab.token_bytes`),
    so GPT-2's ``Ã©`` matches a SentencePiece ``é`` (DSKDv2 compares strings and misses it), and its
    space is kept, so GPT-2's ``Ġ4`` never pairs with the ``4`` of Qwen's ``Ġ`` + ``4``: the two
    positions predict different tokens (`` 4`` vs ``4``), and a teacher prediction there would be a wrong
    label for the student. (``spans.align.exact_token_alignment`` drops spaces to cut a text into
    common pieces, which is right for that and wrong here.) On two byte-level tokenizers the pairs are
    DSKDv2's own (tested).

One shared tokenizer (``ex.teacher is ex.student``) gives the identity pairs over the response-label
positions, which is what both alignments compute for two identical tokenizations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from distillkit.data.encode import Encoded, Example
from distillkit.vocab import Vocab, token_bytes, vocab_of

__all__ = [
    "dtw_path",
    "eta_pairs",
    "eta_pairs_annotator",
    "mined_pairs",
    "mined_pairs_annotator",
    "response_positions",
    "strip_markers",
]

Pairs = list[tuple[int, int]]


def response_positions(enc: Encoded) -> list[int]:
    """Positions ``p`` with ``labels[p] != -100`` (the logits that predict the response and its EOS)."""
    return [p for p, y in enumerate(enc.labels) if y != -100]


def strip_markers(token: str) -> str:
    """A token string without its space markers ``Ġ`` and ``▁`` (DSKD's ``dist_fn`` / ``align_sequences``)."""
    return token.replace("Ġ", "").replace("▁", "")


# ----------------------------------------------------------------------------- DTW
def dtw_path(cost: np.ndarray) -> Pairs:
    """The dynamic-time-warping path of an ``(n, m)`` cost matrix, as ``[(i, j), ...]`` from (0, 0) to (n-1, m-1).

    Accumulated cost ``D[i, j] = cost[i, j] + min(D[i-1, j], D[i, j-1], D[i-1, j-1])`` with
    ``D[-1, -1] = 0`` and every other out-of-range cell infinite; the path is traced back from
    ``(n-1, m-1)`` taking, among the three predecessors, the smallest ``D``, ties broken as
    diagonal, then ``(i-1, j)``, then ``(i, j-1)`` (DSKD's ``dtw``, after simpledtw).

    Each row is one vectorized step: with ``a[j] = cost[i, j] + min(D[i-1, j], D[i-1, j-1])`` and
    ``S`` the running sum of ``cost[i]``, ``D[i, j] = S[j] + min_{k <= j} (a[k] - S[k])`` (a prefix
    minimum), so the DP is ``n`` numpy steps of length ``m`` and the traceback ``n + m`` steps.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"cost must be a non-empty 2-D matrix, got shape {cost.shape}")
    n, m = cost.shape
    acc = np.empty((n, m), dtype=np.float64)
    prev = np.full(m + 1, np.inf)  # prev[j + 1] = D[i-1, j], prev[0] = D[i-1, -1]
    prev[0] = 0.0
    for i in range(n):
        row = cost[i]
        a = row + np.minimum(prev[1:], prev[:-1])
        s = np.cumsum(row)
        acc[i] = s + np.minimum.accumulate(a - s)
        prev[1:] = acc[i]
        prev[0] = np.inf

    path = []
    i, j = n - 1, m - 1
    inf = np.inf
    while i > 0 or j > 0:
        path.append((i, j))
        diag = acc[i - 1, j - 1] if i > 0 and j > 0 else inf
        up = acc[i - 1, j] if i > 0 else inf
        left = acc[i, j - 1] if j > 0 else inf
        if diag <= up and diag <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    path.append((0, 0))
    path.reverse()
    return path


def _edit_costs(teacher_strings: Sequence[str], student_strings: Sequence[str]) -> np.ndarray:
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    return process.cdist(
        list(teacher_strings), list(student_strings), scorer=Levenshtein.distance, dtype=np.int32, workers=1
    )


def mined_pairs(
    student: Encoded,
    teacher: Encoded,
    student_vocab: Vocab | Any,
    teacher_vocab: Vocab | Any,
    tea2stu: torch.Tensor | np.ndarray | None = None,
) -> Pairs:
    """MinED's 1:1 pairs of one example (see the module docstring), as ``(student_pos, teacher_pos)``.

    ``*_vocab`` are :class:`~distillkit.vocab.Vocab`\\ s (or tokenizers, converted once per call: pass
    Vocabs in loops). ``tea2stu``: the teacher-id -> student-id MinED map; when given, only pairs whose
    student input id is the image of the teacher input id are kept.
    """
    sp, tp = response_positions(student), response_positions(teacher)
    if not sp or not tp:
        return []
    if student is teacher:
        return [(p, p) for p in sp]
    s_vocab, t_vocab = vocab_of(student_vocab), vocab_of(teacher_vocab)
    s_ids = [student.input_ids[p] for p in sp]
    t_ids = [teacher.input_ids[p] for p in tp]
    s_str = [strip_markers(s_vocab.tokens[i]) for i in s_ids]
    t_str = [strip_markers(t_vocab.tokens[i]) for i in t_ids]
    path = dtw_path(_edit_costs(t_str, s_str))  # (teacher index, student index), DSKD's argument order

    visits = np.zeros(len(sp), dtype=np.int64)
    partner = np.zeros(len(sp), dtype=np.int64)
    for i, j in path:
        visits[j] += 1
        partner[j] = i
    pairs = [(j, int(partner[j])) for j in np.nonzero(visits == 1)[0].tolist()]
    if tea2stu is not None:
        lut = np.asarray(tea2stu.cpu() if isinstance(tea2stu, torch.Tensor) else tea2stu)
        pairs = [(j, i) for j, i in pairs if s_ids[j] == int(lut[t_ids[i]])]
    return [(sp[j], tp[i]) for j, i in pairs]


# ----------------------------------------------------------------------------- ETA
def _label_bytes(enc: Encoded, positions: list[int], vocab: Vocab, text: str | None) -> list[bytes]:
    """Each label token's bytes, spaces kept; ``b""`` for a special token (EOS) or a phantom space.

    A SentencePiece tokenizer prepends ``▁`` to the text it is given, and distillkit tokenizes the
    response on its own, so the first response token may carry a space that is not in the text. With
    ``text``, a leading space is dropped from a token whose first source character (its offsets) is not
    whitespace.
    """
    out = []
    for p in positions:
        y = enc.labels[p]
        if not enc.valid[p + 1] or y in vocab.special:
            out.append(b"")
            continue
        raw = token_bytes(vocab.tokens[y], vocab.byte_level)
        start, end = enc.offsets[p + 1]
        if text is not None and raw.startswith(b" ") and end > start and not text[start].isspace():
            raw = raw[1:]
        out.append(raw)
    return out


def _exact_walk(a: list[bytes], b: list[bytes]) -> Pairs:
    """Greedy 1:1 pairs of identical byte strings at the same place (DSKDv2's ``align_sequences`` on bytes).

    At a sync point (both sides have consumed the same bytes) the next two tokens pair when they are
    identical; otherwise the side that has consumed fewer bytes takes its next token until the consumed
    bytes agree again. Empty tokens (specials, phantom spaces) are skipped and never pair. If the consumed
    strings stop being prefixes of one another (texts that differ), the walk re-syncs at the next tokens.
    """
    pairs: Pairs = []
    i = j = 0
    acc_a = acc_b = b""
    while i < len(a) and j < len(b):
        if not a[i]:
            i += 1
            continue
        if not b[j]:
            j += 1
            continue
        if not acc_a and not acc_b and a[i] == b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
            continue
        if len(acc_a) <= len(acc_b):
            acc_a += a[i]
            i += 1
        else:
            acc_b += b[j]
            j += 1
        if acc_a == acc_b or not (acc_a.startswith(acc_b) or acc_b.startswith(acc_a)):
            acc_a = acc_b = b""
    return pairs


def eta_pairs(
    student: Encoded,
    teacher: Encoded,
    student_vocab: Vocab | Any,
    teacher_vocab: Vocab | Any,
    pair_eos: bool = True,
    text: str | None = None,
) -> Pairs:
    """ETA's 1:1 pairs of one example on the response label tokens (see the module docstring).

    A pair ``(s, t)`` means ``labels_student[s]`` and ``labels_teacher[t]`` are the same bytes at the
    same place of the response (or both the final EOS, with ``pair_eos``). ``text`` (the example's
    ``prompt + response``) lets a SentencePiece side's phantom leading space be ignored.
    """
    sp, tp = response_positions(student), response_positions(teacher)
    if not sp or not tp:
        return []
    if student is teacher:
        return [(p, p) for p in sp]
    s_vocab, t_vocab = vocab_of(student_vocab), vocab_of(teacher_vocab)
    found = _exact_walk(_label_bytes(student, sp, s_vocab, text), _label_bytes(teacher, tp, t_vocab, text))
    pairs = [(sp[i], tp[j]) for i, j in found]
    ends_with_eos = (
        s_vocab.eos is not None
        and t_vocab.eos is not None
        and student.labels[sp[-1]] == s_vocab.eos
        and teacher.labels[tp[-1]] == t_vocab.eos
    )
    if pair_eos and ends_with_eos:
        pairs.append((sp[-1], tp[-1]))
    return pairs


# ----------------------------------------------------------------------------- annotators
def _stats(name: str, examples: list[Example]) -> dict[str, Any]:
    counts = [len(ex.pairs.get(name, [])) for ex in examples]
    positions = sum(len(response_positions(ex.student)) for ex in examples)
    total = sum(counts)
    return {
        "name": name,
        "examples": len(examples),
        "pairs": total,
        "pairs_per_example": round(total / max(1, len(examples)), 2),
        "min_pairs": min(counts, default=0),
        "coverage": round(total / max(1, positions), 4),  # paired share of the student's response positions
        "without_pairs": sum(c == 0 for c in counts),
    }


def _annotate_mined(
    examples: list[Example], *, name: str, s_vocab: Any, t_vocab: Any, lut: Any
) -> dict[str, Any]:
    for ex in examples:
        ex.pairs[name] = mined_pairs(ex.student, ex.teacher, s_vocab, t_vocab, lut)
    return _stats(name, examples)


def mined_pairs_annotator(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    *,
    tea2stu: torch.Tensor | None = None,
    name: str = "mined",
) -> Callable[[list[Example]], dict[str, Any]]:
    """An annotator setting ``ex.pairs[name]`` to :func:`mined_pairs`; returns the stats (pairs per
    example, the share of student response positions paired, examples without pairs)."""
    s_vocab, t_vocab = vocab_of(student_tokenizer), vocab_of(teacher_tokenizer)
    lut = (
        None
        if tea2stu is None
        else np.asarray(tea2stu.cpu() if isinstance(tea2stu, torch.Tensor) else tea2stu)
    )
    if lut is not None and lut.shape != (len(t_vocab),):
        raise ValueError(
            f"tea2stu has shape {lut.shape}; it must map every teacher id: ({len(t_vocab)},) for {t_vocab.name!r}"
        )

    # a partial of a module-level function, not a closure: it pickles (ddp_spawn pickles the datamodule)
    return functools.partial(_annotate_mined, name=name, s_vocab=s_vocab, t_vocab=t_vocab, lut=lut)


def _annotate_eta(
    examples: list[Example], *, name: str, s_vocab: Any, t_vocab: Any, pair_eos: bool
) -> dict[str, Any]:
    for ex in examples:
        ex.pairs[name] = eta_pairs(ex.student, ex.teacher, s_vocab, t_vocab, pair_eos, ex.text)
    return _stats(name, examples)


def eta_pairs_annotator(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    *,
    pair_eos: bool = True,
    name: str = "eta",
) -> Callable[[list[Example]], dict[str, Any]]:
    """An annotator setting ``ex.pairs[name]`` to :func:`eta_pairs`; returns the stats."""
    s_vocab, t_vocab = vocab_of(student_tokenizer), vocab_of(teacher_tokenizer)

    # a partial of a module-level function, not a closure: it pickles (ddp_spawn pickles the datamodule)
    return functools.partial(_annotate_eta, name=name, s_vocab=s_vocab, t_vocab=t_vocab, pair_eos=pair_eos)
