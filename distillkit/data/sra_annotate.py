"""SRA's aligned spans in data preparation: one span grid over the response, both tokenizations.

:func:`sra_grid_annotator` builds an annotator (``Callable[[list[Example]], dict]``, as the data
module runs them once per split) that sets, on each example::

    ex.grids[name] = (student_groups, teacher_groups)

two lists of equal length; group ``i`` lists token positions into that side's ``input_ids`` and covers
the same characters on both sides (up to the reference walk's byte-piece quirk, below). Only the
response is segmented: a token takes part iff it is valid (BOS/EOS are not) and its offsets start at
or after ``ex.prompt_chars`` (SRA's ``student_start`` / ``teacher_start``, ctkd.md §2.1); the prompt
never contributes a group. The training step then only pools (``pool_spans``), never aligns.

Sources (``spans.source``):

* ``"cosegment"`` (default): :func:`distillkit.spans.align.cosegment`, the minimal co-segmentation
  cut only where neither side has a token straddling the cut. It keeps the byte pieces of one
  multibyte character or emoji in one group; ``one_sided`` says what happens to characters that only
  one side tokenizes (``"merge"``: folded into the neighbouring group; ``"drop"``: left out).
* ``"reference_lcs"``: the release's end-offset two-pointer walk
  (:func:`distillkit.spans.reference_lcs.reference_lcs`, ``SRE@d32ad955:data_utils.py``), for
  fidelity. It can split the pieces of one character across two groups (then those two groups'
  characters differ between the sides); it equals ``cosegment`` on texts without such splits.
  ``one_sided`` does not apply to it.

Both are capped at ``max_spans`` groups per example (reference ``N_SPAN = 1024``) by merging adjacent
groups evenly with the reference's subsampling rule (:func:`~distillkit.spans.reference_lcs.cap_groups`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from distillkit.data.encode import Encoded, Example
from distillkit.spans.align import ONE_SIDED, cosegment, groups_to_membership
from distillkit.spans.reference_lcs import N_SPAN, cap_groups, reference_lcs

#: Valid values of ``sra_grid_annotator(source=...)``.
GRID_SOURCES = ("cosegment", "reference_lcs")


def _plain(name: str, value: object, valid: tuple[str, ...]) -> str:
    plain = getattr(value, "value", value)
    if plain not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")
    return plain


def response_tokens(enc: Encoded, prompt_chars: int) -> list[bool]:
    """Per token: valid (not BOS/EOS) and starting at or after the response's first character."""
    return [ok and start >= prompt_chars for (start, _), ok in zip(enc.offsets, enc.valid)]


def _first(mask: list[bool]) -> int:
    return next((t for t, ok in enumerate(mask) if ok), len(mask))


def _raw_grid(ex: Example, source: str, one_sided: str) -> tuple[list[list[int]], list[list[int]]]:
    s_mask = response_tokens(ex.student, ex.prompt_chars)
    t_mask = response_tokens(ex.teacher, ex.prompt_chars)
    if source == "cosegment":
        groups = cosegment(ex.student.offsets, s_mask, ex.teacher.offsets, t_mask, one_sided=one_sided)
        return groups_to_membership(groups)
    return reference_lcs(
        ex.student.offsets,
        s_mask,
        ex.teacher.offsets,
        t_mask,
        start_a=_first(s_mask),
        start_b=_first(t_mask),
        max_spans=max(len(ex.student.offsets), len(ex.teacher.offsets), 1),  # no cap here
    )


def example_grid(
    ex: Example, source: str = "cosegment", max_spans: int = N_SPAN, one_sided: str = "merge"
) -> tuple[list[list[int]], list[list[int]]]:
    """``(student_groups, teacher_groups)`` of one example, capped at ``max_spans`` (module docstring)."""
    source = _plain("spans.source", source, GRID_SOURCES)
    one_sided = _plain("spans.one_sided", one_sided, ONE_SIDED)
    return cap_groups(*_raw_grid(ex, source, one_sided), max_spans)


def _uncovered(enc: Encoded, groups: list[list[int]], prompt_chars: int, text_len: int) -> int:
    """Response characters that no grouped token of this side covers."""
    covered = np.zeros(max(text_len - prompt_chars, 0), dtype=bool)
    for group in groups:
        for t in group:
            start, end = enc.offsets[t]
            covered[max(start - prompt_chars, 0) : max(end - prompt_chars, 0)] = True
    return int((~covered).sum())


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0, "max": 0}
    return {"mean": float(np.mean(values)), "min": int(min(values)), "max": int(max(values))}


def _annotate_grids(
    examples: list[Example], *, source: str, max_spans: int, one_sided: str, name: str
) -> dict[str, Any]:
    per_example: list[int] = []
    tokens = {"student": [], "teacher": []}
    uncovered = {"student": 0, "teacher": 0}
    capped = 0
    for ex in examples:
        raw_s, raw_t = _raw_grid(ex, source, one_sided)
        capped += int(len(raw_s) > max_spans)
        s_groups, t_groups = cap_groups(raw_s, raw_t, max_spans)
        ex.grids[name] = (s_groups, t_groups)
        per_example.append(len(s_groups))
        for side, enc, groups in (("student", ex.student, s_groups), ("teacher", ex.teacher, t_groups)):
            tokens[side].extend(len(g) for g in groups)
            uncovered[side] += _uncovered(enc, groups, ex.prompt_chars, len(ex.text))
    return {
        f"grids.{name}": {
            "source": source,
            "max_spans": max_spans,
            "examples": len(examples),
            "groups": int(sum(per_example)),
            "groups_per_example": _summary(per_example),
            "examples_without_groups": sum(1 for n in per_example if n == 0),
            "capped_examples": capped,
            "tokens_per_group": {side: _summary(v) for side, v in tokens.items()},
            "uncovered_response_chars": uncovered,
        }
    }


def sra_grid_annotator(
    source: str = "cosegment",
    max_spans: int = N_SPAN,
    one_sided: str = "merge",
    name: str = "aligned",
) -> Callable[[list[Example]], dict[str, Any]]:
    """An annotator that sets ``ex.grids[name] = (student_groups, teacher_groups)`` on every example.

    ``source``: ``cosegment`` | ``reference_lcs``; ``max_spans``: at most this many groups per example
    (adjacent groups merged evenly); ``one_sided``: ``merge`` | ``drop`` (``cosegment`` only). The
    returned stats (under ``"grids.{name}"``): the source, groups per example, tokens per group on
    each side, examples without any group, examples that hit the cap, and the response characters
    left uncovered on each side. Bad choices fail here, before any example is touched.
    """
    source = _plain("spans.source", source, GRID_SOURCES)
    one_sided = _plain("spans.one_sided", one_sided, ONE_SIDED)
    if isinstance(max_spans, bool) or not isinstance(max_spans, int) or max_spans < 1:
        raise ValueError(f"spans.max_spans={max_spans!r} must be an int >= 1 (reference: {N_SPAN})")

    # a partial of a module-level function, not a closure: it pickles (ddp_spawn pickles the datamodule)
    return functools.partial(
        _annotate_grids, source=source, max_spans=max_spans, one_sided=one_sided, name=name
    )
