"""SRA's aligned spans as the authors' release computes them: an end-offset two-pointer walk.

A second implementation of the co-segmentation, for fidelity (``spans.source=reference_lcs``); the
default is :func:`distillkit.spans.align.cosegment`. It follows
``wind123mountain/SRE@d32ad955:data_utils.py`` (``longest_common_subsequence``,
``prepare_pooler_v2``), ctkd.md §2.1, on distillkit's per-side offsets and validity masks:

* two pointers start at each side's first response token (the reference's ``student_start`` /
  ``teacher_start``, the prompt token counts);
* a token that is invalid (BOS/EOS/padding in distillkit) or whose end offset is 0 is skipped;
* if ``end_a[i] == end_b[j]`` a boundary ``(i + 1, j + 1)`` is emitted and both pointers advance,
  otherwise the side with the smaller end advances;
* the spans are the index ranges between consecutive boundaries, the first one starting at the two
  start indices; tokens after the last boundary are in no span;
* at most ``max_spans`` (reference ``N_SPAN = 1024``) boundaries are kept, by the reference's uniform
  subsampling (:func:`subsample_indices`), which merges adjacent spans.

How it differs from :func:`~distillkit.spans.align.cosegment` (documented, tested):

* only *end* offsets are compared. When one side splits a multibyte character into byte pieces that
  share an end offset (GPT-2: an emoji as two tokens ending at the same character) and the other side
  has one token ending there, the walk closes a span after the *first* piece and puts the remaining
  pieces into the next span, whose characters then differ between the sides. ``cosegment`` never cuts
  inside a token, so all the pieces of one character stay in one group;
* a zero-width token with a positive end offset takes part in the walk (``cosegment`` ignores it);
* skipped tokens are left out of the groups here (the reference's index ranges would include them;
  in distillkit's sequences no skipped token lies inside the response, so nothing changes);
* the d32ad955 walk also has a re-sync branch for a zero-end token followed by a real one (texts
  packed back to back); distillkit tokenizes one text per sequence, so that branch has nothing to
  act on and is not reproduced.

On texts whose tokens tile the response contiguously on both sides with strictly increasing ends
(e.g. ASCII English for GPT-2 and Qwen), both give the same groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: The reference's cap on boundaries (= spans) per sample (``data_utils.py``: ``N_SPAN = 1024``).
N_SPAN = 1024

Groups = tuple[list[list[int]], list[list[int]]]


def _ends_and_skip(offsets, valid) -> tuple[list[int], list[bool]]:
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
    ends = arr[:, 1]
    return ends.tolist(), (~ok | (ends == 0)).tolist()


def end_offset_boundaries(
    offsets_a: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_a: Sequence[bool] | np.ndarray | torch.Tensor | None,
    offsets_b: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_b: Sequence[bool] | np.ndarray | torch.Tensor | None,
    start_a: int = 0,
    start_b: int = 0,
) -> list[tuple[int, int]]:
    """The boundaries ``(i + 1, j + 1)`` of the reference walk, before any subsampling.

    ``offsets_x[t]`` are token ``t``'s character offsets, ``valid_x[t]`` False for a token to skip
    (``None`` = all valid; end offset 0 is always skipped, as in the reference); ``start_x`` the first
    token index each pointer looks at.
    """
    ends_a, skip_a = _ends_and_skip(offsets_a, valid_a)
    ends_b, skip_b = _ends_and_skip(offsets_b, valid_b)
    for name, start, n in (("start_a", start_a, len(ends_a)), ("start_b", start_b, len(ends_b))):
        if not 0 <= start <= n:
            raise ValueError(f"{name}={start} must lie in [0, {n}] (the number of tokens)")
    i, j, m, n = start_a, start_b, len(ends_a), len(ends_b)
    boundaries: list[tuple[int, int]] = []
    while i < m and j < n:
        if skip_a[i]:
            i += 1
        elif skip_b[j]:
            j += 1
        elif ends_a[i] == ends_b[j]:
            boundaries.append((i + 1, j + 1))
            i += 1
            j += 1
        elif ends_a[i] < ends_b[j]:
            i += 1
        else:
            j += 1
    return boundaries


def subsample_indices(size: int, max_spans: int) -> list[int]:
    """Which of ``size`` boundaries the reference keeps: all if ``size <= max_spans``, else
    ``[int((k + 1) * size / max_spans) - 1 for k in range(max_spans)]``.

    The reference computes ``step = size / N_SPAN; result[int((k + 1) * step) - 1]`` in floating
    point; here the floor is taken in integers, which is the same for ``N_SPAN = 1024`` (a power of
    two: the float arithmetic is exact) and always keeps the last boundary.
    """
    if max_spans < 1:
        raise ValueError(f"max_spans={max_spans} must be >= 1")
    if size <= max_spans:
        return list(range(size))
    return [(k + 1) * size // max_spans - 1 for k in range(max_spans)]


def cap_groups(groups_a: list[list[int]], groups_b: list[list[int]], max_spans: int) -> Groups:
    """At most ``max_spans`` groups, by merging adjacent groups evenly with the reference's rule.

    The group ends kept are :func:`subsample_indices`; merged group ``k`` is the concatenation of the
    original groups after kept end ``k - 1`` up to kept end ``k``, on both sides (so the merged grid
    still covers the same characters on both sides). Fewer groups are returned unchanged.
    """
    if len(groups_a) != len(groups_b):
        raise ValueError(f"the two sides have {len(groups_a)} and {len(groups_b)} groups; need one grid")
    keep = subsample_indices(len(groups_a), max_spans)
    if len(keep) == len(groups_a):
        return groups_a, groups_b
    out_a, out_b, first = [], [], 0
    for last in keep:
        out_a.append([t for g in groups_a[first : last + 1] for t in g])
        out_b.append([t for g in groups_b[first : last + 1] for t in g])
        first = last + 1
    return out_a, out_b


def reference_lcs(
    offsets_a: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_a: Sequence[bool] | np.ndarray | torch.Tensor | None,
    offsets_b: Sequence[tuple[int, int]] | np.ndarray | torch.Tensor,
    valid_b: Sequence[bool] | np.ndarray | torch.Tensor | None,
    start_a: int = 0,
    start_b: int = 0,
    max_spans: int = N_SPAN,
) -> Groups:
    """The reference's aligned spans as ``(groups_a, groups_b)``: the ``ex.grids`` format.

    Two lists of equal length; group ``k`` lists the (ascending) token positions of that side between
    boundaries ``k - 1`` and ``k`` of :func:`end_offset_boundaries`, the first group starting at
    ``(start_a, start_b)``, skipped tokens left out; then subsampled to at most ``max_spans`` boundaries
    as the reference does (adjacent spans merge). Every group has at least one token on each side (the
    one whose end closed it). See the module docstring for how this differs from ``cosegment``.
    """
    boundaries = end_offset_boundaries(offsets_a, valid_a, offsets_b, valid_b, start_a, start_b)
    _, skip_a = _ends_and_skip(offsets_a, valid_a)
    _, skip_b = _ends_and_skip(offsets_b, valid_b)
    keep = subsample_indices(len(boundaries), max_spans)
    groups_a: list[list[int]] = []
    groups_b: list[list[int]] = []
    prev_a, prev_b = start_a, start_b
    for k in keep:
        end_a, end_b = boundaries[k]
        groups_a.append([t for t in range(prev_a, end_a) if not skip_a[t]])
        groups_b.append([t for t in range(prev_b, end_b) if not skip_b[t]])
        prev_a, prev_b = end_a, end_b
    return groups_a, groups_b
