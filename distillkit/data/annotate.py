"""Span annotation in data preparation: parse every distinct text once (cached on disk), then map
the character spans to each model's own tokens. The training step never parses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillkit.data.encode import Example
from distillkit.spans.cache import SpanCache
from distillkit.spans.membership import MembershipStats, drop_uncovered, spans_in_region, token_membership
from distillkit.types import CharSpan

#: unit set name -> span kinds it is made of
UNIT_SETS = {"word": ("word",), "phrase": ("np", "vp")}
REGIONS = ("all", "response")


def _annotate_spans(
    examples: list[Example], *, parser: Any, sets: tuple[str, ...], rule: str, region: str, cache: SpanCache
) -> dict[str, Any]:
    spans = cache.get_or_parse(parser, [ex.text for ex in examples])
    stats = {name: MembershipStats() for name in sets}
    per_set_counts = dict.fromkeys(sets, 0)
    for ex, found in zip(examples, spans):
        if region == "response":
            found = spans_in_region(found, ex.prompt_chars, len(ex.text))
        for name in sets:
            chosen: list[CharSpan] = [s for s in found if s.kind in UNIT_SETS[name]]
            s_mem = token_membership(chosen, ex.student.offsets, ex.student.valid, rule, stats[name])
            if ex.teacher is ex.student:
                s_mem = [m for m in s_mem if m]
                ex.grids[name] = (s_mem, s_mem)
            else:
                t_mem = token_membership(chosen, ex.teacher.offsets, ex.teacher.valid, rule)
                ex.grids[name] = drop_uncovered(s_mem, t_mem)
            per_set_counts[name] += len(ex.grids[name][0])
    report = cache.last_report.as_dict() if hasattr(cache.last_report, "as_dict") else {}
    return {
        "parser": parser.name,
        "cache": {"hits": cache.last_stats.hits, "misses": cache.last_stats.misses},
        "texts": report,
        "spans": {
            name: {"kept": per_set_counts[name], "uncovered": stats[name].uncovered_spans} for name in sets
        },
    }


def span_annotator(
    parser: Any,
    sets: tuple[str, ...],
    rule: str = "reference",
    region: str = "all",
    cache_root: str | Path | None = None,
) -> Callable[[list[Example]], dict[str, Any]]:
    """An annotator that adds the span grid ``ex.grids[set] = (student units, teacher units)`` to examples.

    A span that one side's tokens cannot cover is dropped on both sides (the span grid stays the
    same characters on each side) and counted in the returned stats.
    """
    unknown = [s for s in sets if s not in UNIT_SETS]
    if unknown:
        raise ValueError(f"span unit sets {unknown}; valid: {', '.join(UNIT_SETS)}")
    if region not in REGIONS:
        raise ValueError(f"span region {region!r}; valid: {', '.join(REGIONS)}")
    cache = SpanCache(Path(cache_root) / "spans" if cache_root else None)

    # a partial of a module-level function, not a closure: it pickles (ddp_spawn pickles the datamodule)
    return functools.partial(_annotate_spans, parser=parser, sets=sets, rule=rule, region=region, cache=cache)
