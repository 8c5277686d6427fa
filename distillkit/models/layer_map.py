"""Resolving a ``layer_map`` config into (teacher index, student index, level) triples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("reference", "explicit", "uniform", "last")


@dataclass(frozen=True)
class LayerPair:
    teacher: int  # index into the teacher's HF hidden_states (0 = embeddings)
    student: int
    level: str  # "word" | "phrase"


def resolve_layer_map(
    lm: Any, pair: Any, n_teacher: int, n_student: int, level_override: str = "both"
) -> list[LayerPair]:
    """The mapped pairs; out-of-range indices fail here, naming each model's depth."""
    kind = str(lm.kind)
    if kind == "reference":
        t, s = list(pair.teacher_layers), list(pair.student_layers)
        if not t:
            raise ValueError(
                f"model={pair.name} has no reference layer map; use layer_map=explicit or uniform"
            )
    elif kind == "explicit":
        t, s = list(lm.teacher), list(lm.student)
    elif kind == "uniform":
        k = int(lm.num_pairs or 1)
        t = [round(i * n_teacher / k) for i in range(1, k + 1)]
        s = [round(i * n_student / k) for i in range(1, k + 1)]
    elif kind == "last":
        t, s = [n_teacher], [n_student]
    else:
        raise ValueError(f"layer_map.kind={kind!r}; valid: {', '.join(KINDS)}")
    if len(t) != len(s) or not t:
        raise ValueError(
            f"layer_map: {len(t)} teacher vs {len(s)} student indices; give the same non-zero number"
        )
    if kind == "reference" and lm.num_pairs is not None:
        if not 1 <= lm.num_pairs <= len(t):
            raise ValueError(
                f"layer_map.num_pairs={lm.num_pairs}; the reference map of {pair.name} has {len(t)} pairs"
            )
        # the reference scripts keep the DEEPEST K pairs (1 layer = the last pair, at phrase level:
        # split 0 0 1 1; 2 layers = the last two, the first of them word level: split 0 1 2 2)
        t, s = t[-lm.num_pairs :], s[-lm.num_pairs :]
    for name, idx, depth in (("teacher", t, n_teacher), ("student", s, n_student)):
        bad = [i for i in idx if not 0 <= int(i) <= depth]
        if bad:
            raise ValueError(
                f"layer_map: {name} indices {bad} are out of range: the {name} has {depth} layers, so "
                f"hidden_states indices run 0..{depth} (0 = embeddings). Change the indices (layer_map=explicit), or use layer_map=uniform or last."
            )
    levels = []
    for i in range(len(t)):
        if level_override in ("word", "phrase"):
            levels.append(level_override)
        else:
            word_pairs = int(lm.word_pairs)
            if kind == "reference" and lm.num_pairs is not None:
                word_pairs = min(word_pairs, len(t) - 1)  # one kept pair is phrase level (split 0 0 1 1)
            levels.append("word" if i < word_pairs else "phrase")
    return [LayerPair(int(a), int(b), lv) for a, b, lv in zip(t, s, levels)]
