"""Aligning two tokenizations of the same text (cross-tokenizer distillation).

* :func:`cosegment`: the minimal co-segmentation — groups of consecutive tokens of each side that
  cover the same characters, cut only where *both* tokenizations have a boundary. These are SRA's
  "aligned spans" (papers.md §3 step 1): many-to-many token groups, from character offsets alone.
* :func:`exact_token_alignment`: 1:1 pairs of tokens whose strings agree once the space markers
  are removed, in order (the DSKDv2-ETA / MinED style alignment, papers.md §4), from token strings.

Boundary rule of :func:`cosegment`. Every valid token is the half-open character interval
``[start, end)`` of its offsets; tokens with empty offsets (``start == end``: BOS/EOS, padding,
a zero-width piece) and tokens marked invalid are in no group. A position ``p`` may be cut on one
side iff no token of that side *straddles* it (``start < p < end``). That makes the byte-level
pieces of one character (GPT-2 splits an emoji into tokens with overlapping offsets such as
``(11, 13)`` and ``(12, 13)``) inseparable, and a byte-fallback run sharing one offset range too.
The cuts are the positions allowed on both sides; each token goes to the piece its start falls in.
Whitespace may be attached to different neighbours on each side (``"Ġthere"`` = `` there`` vs
``"▁"`` + ``"there"``), and a side may leave characters untokenized: a piece that gets tokens on one
side only is merged into the next piece (the last one into the previous), so every group has tokens
on both sides, the groups tile the covered characters contiguously, and each group's ``[start, end)``
contains all of its tokens on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

ONE_SIDED = ("merge", "drop")


@dataclass
class AlignedGroup:
    """Characters ``[start, end)`` and the tokens of each side inside them (indices, ascending)."""

    start: int
    end: int
    tokens_a: list[int] = field(default_factory=list)
    tokens_b: list[int] = field(default_factory=list)


def _intervals(offsets, valid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, starts, ends) of the valid, non-empty tokens of one side."""
    arr = offsets.detach().cpu().numpy() if isinstance(offsets, torch.Tensor) else np.asarray(offsets)
    arr = arr.reshape(-1, 2).astype(np.int64, copy=False)
    if valid is None:
        ok = np.ones(len(arr), dtype=bool)
    elif isinstance(valid, torch.Tensor):
        ok = valid.detach().cpu().numpy().astype(bool).reshape(-1)
    else:
        ok = np.asarray(valid, dtype=bool).reshape(-1)
    if ok.shape[0] != arr.shape[0]:
        raise ValueError(f"valid has {ok.shape[0]} entries for {arr.shape[0]} offsets")
    keep = ok & (arr[:, 1] > arr[:, 0])
    idx = np.nonzero(keep)[0]
    return idx, arr[idx, 0], arr[idx, 1]


def _straddled(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each position, whether some token ``[s, e)`` has ``s < p < e``.

    For non-empty tokens, ``e <= p`` implies ``s < p``, so the count of straddling tokens is
    ``#(s < p) - #(e <= p)``.
    """
    n_started = np.searchsorted(np.sort(starts), positions, side="left")
    n_ended = np.searchsorted(np.sort(ends), positions, side="right")
    return (n_started - n_ended) > 0


def cosegment(
    offsets_a: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_a: Sequence[bool] | np.ndarray | torch.Tensor | None,
    offsets_b: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_b: Sequence[bool] | np.ndarray | torch.Tensor | None,
    one_sided: str = "merge",
) -> list[AlignedGroup]:
    """The minimal aligned groups of two tokenizations of the same text (see the module docstring).

    ``offsets_x[t]`` are token ``t``'s character offsets, ``valid_x[t]`` False for special/padding
    tokens (``None`` = all valid). ``one_sided="merge"`` (default) folds a piece covered by one side
    only into its neighbour, so every valid non-empty token of both sides is in exactly one group;
    ``"drop"`` leaves such pieces (and their tokens) out instead — e.g. when one side was truncated.
    Returns ``[]`` when either side has no valid token.
    """
    if one_sided not in ONE_SIDED:
        raise ValueError(f"Unknown one_sided={one_sided!r}; valid: {', '.join(ONE_SIDED)}")
    idx_a, sa, ea = _intervals(offsets_a, valid_a)
    idx_b, sb, eb = _intervals(offsets_b, valid_b)
    if idx_a.size == 0 or idx_b.size == 0:
        return []

    candidates = np.unique(np.concatenate([sa, ea, sb, eb]))
    cuts = candidates[~(_straddled(candidates, sa, ea) | _straddled(candidates, sb, eb))]
    n_pieces = len(cuts) - 1
    piece_a = np.searchsorted(cuts, sa, side="right") - 1  # the piece each token starts in
    piece_b = np.searchsorted(cuts, sb, side="right") - 1
    has_a = (np.bincount(piece_a, minlength=n_pieces) > 0).tolist()
    has_b = (np.bincount(piece_b, minlength=n_pieces) > 0).tolist()

    # group of each piece (-1 = dropped): a plain scan over piece flags, no per-token work
    group_of_piece = [-1] * n_pieces
    bounds: list[list[int]] = []  # [start piece, end piece] of each group
    if one_sided == "drop":
        for k in range(n_pieces):
            if has_a[k] and has_b[k]:
                group_of_piece[k] = len(bounds)
                bounds.append([k, k + 1])
    else:
        first, seen_a, seen_b = 0, False, False
        for k in range(n_pieces):
            seen_a, seen_b = seen_a or has_a[k], seen_b or has_b[k]
            if seen_a and seen_b:
                group_of_piece[first : k + 1] = [len(bounds)] * (k + 1 - first)
                bounds.append([first, k + 1])
                first, seen_a, seen_b = k + 1, False, False
        if bounds and first < n_pieces:  # a one-sided tail joins the last group
            group_of_piece[first:] = [len(bounds) - 1] * (n_pieces - first)
            bounds[-1][1] = n_pieces
    if not bounds:
        return []

    lookup = np.asarray(group_of_piece, dtype=np.int64)
    cut_list = cuts.tolist()
    groups = [AlignedGroup(cut_list[a], cut_list[b]) for a, b in bounds]
    for idx, piece, key in ((idx_a, piece_a, "tokens_a"), (idx_b, piece_b, "tokens_b")):
        group = lookup[piece]
        order = np.argsort(group, kind="stable")  # tokens stay ascending inside a group
        tokens, group = idx[order].tolist(), group[order]
        edges = np.searchsorted(group, np.arange(len(groups) + 1), side="left").tolist()
        for g, lo, hi in zip(groups, edges, edges[1:]):
            setattr(g, key, tokens[lo:hi])
    return groups


def groups_to_membership(groups: Sequence[AlignedGroup]) -> tuple[list[list[int]], list[list[int]]]:
    """The groups as two span -> tokens lists (same span grid on both sides) for ``collate_membership``."""
    return [list(g.tokens_a) for g in groups], [list(g.tokens_b) for g in groups]


def _byte_level_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable-character table (byte-level BPE token strings)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_decoder()


def _is_byte_level(tokens: Sequence[str]) -> bool:
    """Byte-level BPE strings use only GPT-2's 256 printable stand-ins (``▁`` is not one of them)."""
    return all(ch in _BYTE_LEVEL for tok in tokens for ch in tok)


def normalize_token(token: str, byte_level: bool) -> bytes:
    """A token string as the bytes it stands for, without spaces (``Ġ`` / ``▁`` markers removed).

    Byte-level BPE strings (``"Ġcaf"``, ``"Ã©"``) are mapped back through GPT-2's byte table;
    SentencePiece strings have ``▁`` as a space and ``<0xNN>`` byte-fallback pieces.
    """
    if byte_level and all(ch in _BYTE_LEVEL for ch in token):
        raw = bytes(_BYTE_LEVEL[ch] for ch in token)
    elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        raw = bytes([int(token[3:5], 16)])
    else:
        raw = token.replace("▁", " ").encode("utf-8")
    return raw.replace(b" ", b"")


def exact_token_alignment(
    tokens_a: Sequence[str],
    tokens_b: Sequence[str],
    byte_level_a: bool | None = None,
    byte_level_b: bool | None = None,
    valid_a: Sequence[bool] | None = None,
    valid_b: Sequence[bool] | None = None,
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of tokens whose strings agree after removing space markers, in order.

    A greedy walk in the spirit of DSKDv2's ``align_sequences``: at a sync point (both sides have
    consumed the same characters) a pair is taken when the two next tokens agree; otherwise the side
    that has consumed fewer bytes takes its next token until both have consumed the same string,
    which is the next sync point. If the consumed strings stop being prefixes of one another (the
    texts differ, e.g. an unstripped special token), the walk re-syncs from the next tokens.
    ``byte_level_x`` says whether side x uses byte-level BPE strings (default: detected — every
    character is one of GPT-2's byte stand-ins). Whitespace-only tokens never pair.
    ``valid_x[t] = False`` (BOS/EOS, padding) makes token ``t`` count as empty: it never pairs and
    adds nothing to the consumed string.
    """
    if byte_level_a is None:
        byte_level_a = _is_byte_level([t for t, ok in zip(tokens_a, valid_a or [True] * len(tokens_a)) if ok])
    if byte_level_b is None:
        byte_level_b = _is_byte_level([t for t, ok in zip(tokens_b, valid_b or [True] * len(tokens_b)) if ok])
    norm_a = [
        normalize_token(t, byte_level_a) if ok else b""
        for t, ok in zip(tokens_a, valid_a or [True] * len(tokens_a))
    ]
    norm_b = [
        normalize_token(t, byte_level_b) if ok else b""
        for t, ok in zip(tokens_b, valid_b or [True] * len(tokens_b))
    ]

    pairs: list[tuple[int, int]] = []
    i = j = 0
    acc_a = acc_b = b""
    while i < len(norm_a) and j < len(norm_b):
        if not acc_a and not acc_b:  # at a sync point
            if not norm_a[i] or not norm_b[j]:  # skip whitespace-only tokens
                i, j = i + (not norm_a[i]), j + (not norm_b[j])
                continue
            if norm_a[i] == norm_b[j]:
                pairs.append((i, j))
                i, j = i + 1, j + 1
                continue
        if len(acc_a) <= len(acc_b):
            acc_a += norm_a[i]
            i += 1
        else:
            acc_b += norm_b[j]
            j += 1
        if acc_a == acc_b or not (acc_a.startswith(acc_b) or acc_b.startswith(acc_a)):
            acc_a = acc_b = b""
    return pairs
