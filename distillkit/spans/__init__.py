"""The span layer: parse once, map to any tokenizer, pool in one vectorized op.

* :mod:`~distillkit.spans.parsers`: text -> character spans (spaCy, stanza, regex words), cached by
  :mod:`~distillkit.spans.cache`.
* :mod:`~distillkit.spans.membership`: character spans -> each tokenizer's tokens -> a batched
  :class:`~distillkit.types.SpanMembership`.
* :mod:`~distillkit.spans.align`: the co-segmentation of two tokenizations of one text.
* :mod:`~distillkit.spans.pooling`: span centres of mass and token weights (inside the training step).

Parsers (spaCy, stanza) are imported only when used.
"""

from distillkit.spans.align import AlignedGroup, cosegment, exact_token_alignment, groups_to_membership
from distillkit.spans.cache import CacheStats, SpanCache, SpanReport, parse_stats
from distillkit.spans.membership import (
    MEMBERSHIP_RULES,
    MembershipStats,
    collate_membership,
    drop_uncovered,
    shift_spans,
    spans_in_region,
    token_membership,
    uncovered,
)
from distillkit.spans.parsers import (
    PARSERS,
    SpacySpanParser,
    SpanParser,
    StanzaSpanParser,
    WordSpanParser,
    build_parser,
)
from distillkit.spans.pooling import (
    attention_received_weights,
    entropy_weights,
    normalize_in_spans,
    pool_spans,
    self_similarity_weights,
    token_mask_from_membership,
    uniform_weights,
)

__all__ = [
    "PARSERS",
    "AlignedGroup",
    "CacheStats",
    "SpacySpanParser",
    "SpanCache",
    "SpanParser",
    "SpanReport",
    "StanzaSpanParser",
    "WordSpanParser",
    "build_parser",
    "cosegment",
    "exact_token_alignment",
    "groups_to_membership",
    "parse_stats",
    "MEMBERSHIP_RULES",
    "MembershipStats",
    "attention_received_weights",
    "collate_membership",
    "drop_uncovered",
    "entropy_weights",
    "normalize_in_spans",
    "pool_spans",
    "self_similarity_weights",
    "shift_spans",
    "spans_in_region",
    "token_mask_from_membership",
    "token_membership",
    "uncovered",
    "uniform_weights",
]
