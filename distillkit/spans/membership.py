"""Character spans -> token membership, and the batched membership the pooling consumes.

Spans live in characters (``CharSpan``); each model maps them to its *own* tokens through the
character offsets its tokenizer returned (``return_offsets_mapping=True``). This runs in data
preparation (numpy, one comparison grid per text), never in the training step.

Two membership rules:

* ``"reference"`` (the MTA code, papers.md §2.1): token ``t`` belongs to span ``s`` iff
  ``start(t) + 1 >= s.start and end(t) <= s.end``. The ``+1`` lets a byte-level BPE token that
  carries its leading space (``"Ġword"`` = ``" word"``) belong to the span starting at ``word``.
  (It also admits a one-character token that ends exactly where the span starts — a quirk kept
  for faithfulness.)
* ``"exact"``: ``start(t) >= s.start and end(t) <= s.end``.

Tokens that are not ``valid`` (special tokens, padding) or whose offsets are empty (``start == end``,
e.g. ``(0, 0)``) never belong to a span. A token may belong to several spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from distillkit.types import CharSpan, SpanMembership

MEMBERSHIP_RULES = ("reference", "exact")


@dataclass
class MembershipStats:
    """Counts accumulated over calls of :func:`token_membership` (pass the same object each time)."""

    texts: int = 0
    spans: int = 0
    uncovered_spans: int = 0  # spans that got no token at all
    texts_without_spans: int = 0
    uncovered_examples: list[tuple[int, CharSpan]] = field(default_factory=list)  # (text no., span), first 20

    def as_dict(self) -> dict[str, int]:
        return {
            "texts": self.texts,
            "spans": self.spans,
            "uncovered_spans": self.uncovered_spans,
            "texts_without_spans": self.texts_without_spans,
        }


def _check_rule(rule: str) -> None:
    if rule not in MEMBERSHIP_RULES:
        raise ValueError(f"Unknown membership rule {rule!r}; valid: {', '.join(MEMBERSHIP_RULES)}")


def _as_offsets(offsets: Sequence[Sequence[int]] | np.ndarray | torch.Tensor) -> np.ndarray:
    arr = offsets.detach().cpu().numpy() if isinstance(offsets, torch.Tensor) else np.asarray(offsets)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"offsets must have shape (num_tokens, 2), got {tuple(arr.shape)}")
    return arr.astype(np.int64, copy=False)


def token_membership(
    spans: Sequence[CharSpan],
    offsets: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid: Sequence[bool] | np.ndarray | torch.Tensor | None = None,
    rule: str = "reference",
    stats: MembershipStats | None = None,
) -> list[list[int]]:
    """For each span, the (sorted) indices of the tokens that belong to it.

    ``offsets[t] = (start, end)`` are token ``t``'s character offsets into the text the spans were
    parsed from; ``valid[t]`` is False for special and padding tokens (default: all valid). The
    result has one list per input span, in input order; a span that no token covers gets an empty
    list (counted in ``stats.uncovered_spans`` when ``stats`` is given) — see :func:`drop_uncovered`.
    """
    _check_rule(rule)
    off = _as_offsets(offsets)
    n_tok = off.shape[0]
    if valid is None:
        ok = np.ones(n_tok, dtype=bool)
    else:
        ok = valid.detach().cpu().numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
        ok = ok.astype(bool, copy=False)
        if ok.shape != (n_tok,):
            raise ValueError(f"valid must have shape ({n_tok},) like offsets, got {tuple(ok.shape)}")
    ok = ok & (off[:, 1] > off[:, 0])

    if spans:
        bounds = np.asarray([(s.start, s.end) for s in spans], dtype=np.int64)  # (S, 2)
        lead = 1 if rule == "reference" else 0
        inside = (
            (off[None, :, 0] + lead >= bounds[:, None, 0])
            & (off[None, :, 1] <= bounds[:, None, 1])
            & ok[None, :]
        )  # (S, T)
        span_ids, tok_ids = np.nonzero(inside)  # row-major: grouped by span, tokens ascending
        cuts = np.searchsorted(span_ids, np.arange(1, len(spans)))
        members = [part.tolist() for part in np.split(tok_ids, cuts)]
    else:
        members = []

    if stats is not None:
        empty = [i for i, m in enumerate(members) if not m]
        stats.uncovered_examples.extend(
            (stats.texts, spans[i]) for i in empty[: max(0, 20 - len(stats.uncovered_examples))]
        )
        stats.texts += 1
        stats.spans += len(members)
        stats.uncovered_spans += len(empty)
        stats.texts_without_spans += int(len(members) == len(empty))
    return members


def uncovered(members: Sequence[Sequence[int]]) -> list[int]:
    """Positions of the spans that got no token."""
    return [i for i, m in enumerate(members) if len(m) == 0]


def drop_uncovered(*members_per_side: list[list[int]]) -> tuple[list[list[int]], ...]:
    """Keep only the spans covered on *every* side (same span grid on both sides of a cross-tokenizer pair).

    ``drop_uncovered(members_student, members_teacher)`` returns both lists filtered by the same
    positions, so span ``s`` still means the same characters on each side.
    """
    if not members_per_side:
        return ()
    n = len(members_per_side[0])
    if any(len(m) != n for m in members_per_side):
        raise ValueError(
            f"every side must list the same spans; got {[len(m) for m in members_per_side]} spans"
        )
    keep = [i for i in range(n) if all(len(side[i]) > 0 for side in members_per_side)]
    return tuple([side[i] for i in keep] for side in members_per_side)


def spans_in_region(spans: Sequence[CharSpan], region_start: int, region_end: int) -> list[CharSpan]:
    """The spans lying entirely inside ``[region_start, region_end)`` (e.g. the response only)."""
    if region_end < region_start:
        raise ValueError(f"empty region: region_end={region_end} < region_start={region_start}")
    return [s for s in spans if s.start >= region_start and s.end <= region_end]


def shift_spans(spans: Sequence[CharSpan], delta: int) -> list[CharSpan]:
    """Spans moved by ``delta`` characters (spans parsed on a response, used on prompt + response)."""
    return [CharSpan(s.start + delta, s.end + delta, s.kind) for s in spans]


def collate_membership(
    per_example: Sequence[Sequence[Sequence[int]]],
    seq_len: int,
    pad_left: Sequence[int] | None = None,
) -> SpanMembership:
    """Batch per-example memberships into the flat ``SpanMembership`` the pooling uses.

    ``per_example[b][s]`` lists the token indices of span ``s`` of example ``b`` (as returned by
    :func:`token_membership`, indices into the unpadded tokens). ``pad_left[b]`` is the number of
    padding tokens put *before* example ``b`` (left padding); its token indices are shifted by it.
    ``S`` is the largest span count in the batch (at least 1). ``span_mask[b, s]`` is True for the
    spans that exist and have at least one token.
    """
    B = len(per_example)
    if pad_left is not None and len(pad_left) != B:
        raise ValueError(f"pad_left has {len(pad_left)} entries for a batch of {B}")
    shifts = np.zeros(B, dtype=np.int64) if pad_left is None else np.asarray(pad_left, dtype=np.int64)
    S = max([len(ex) for ex in per_example] + [1])

    sizes = [len(m) for ex in per_example for m in ex]
    example_of_span = np.repeat(np.arange(B), [len(ex) for ex in per_example])
    slot_of_span = np.concatenate([np.arange(len(ex)) for ex in per_example] + [np.zeros(0, dtype=np.int64)])
    flat_tokens = np.fromiter(
        (t for ex in per_example for m in ex for t in m), dtype=np.int64, count=int(sum(sizes))
    )
    pair_example = np.repeat(example_of_span, sizes)
    pair_slot = np.repeat(slot_of_span, sizes)
    tokens = flat_tokens + shifts[pair_example]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= seq_len):
        bad = int(tokens.max() if tokens.max() >= seq_len else tokens.min())
        raise ValueError(
            f"token index {bad} (after left-padding shift) is outside the sequence length {seq_len}"
        )

    span_mask = np.zeros((B, S), dtype=bool)
    span_mask[example_of_span, slot_of_span] = np.asarray(sizes, dtype=np.int64) > 0
    return SpanMembership(
        token_index=torch.from_numpy(pair_example * seq_len + tokens),
        span_index=torch.from_numpy(pair_example * S + pair_slot),
        span_mask=torch.from_numpy(span_mask),
        seq_len=int(seq_len),
    )
