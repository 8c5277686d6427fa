"""The typed contract between data, the LightningModule and the methods.

A batch holds one :class:`SideBatch` per model (each model's own tokenizer, with
character offsets into the same text), the module runs each forward once and hands
the method a :class:`ModelOutput` per model, restricted to what the method declared
in its :class:`Needs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

#: Span kinds produced by the parsers and the co-segmentation.
SPAN_KINDS = ("word", "np", "vp", "aligned")


@dataclass(frozen=True)
class CharSpan:
    """A span of characters ``text[start:end]`` of kind ``word``/``np``/``vp``/``aligned``."""

    start: int
    end: int
    kind: str


class _Tensors:
    """``to`` and ``pin_memory`` of a batch part, from its ``map_tensors(fn)`` (a copy with ``fn`` applied
    to every tensor; a tensor shared by the two sides stays shared)."""

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Any:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Any:
        return self.map_tensors(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Any:
        """Page-locked host copies, so :meth:`to` copies asynchronously (torch's pinning thread calls this
        when the loader has ``pin_memory=True``; a dataclass without it would be left unpinned)."""
        return self.map_tensors(Tensor.pin_memory)


@dataclass
class SpanMembership(_Tensors):
    """Which tokens belong to which span, flattened for one segment op per layer.

    ``token_index[p]`` is the flat index ``b * L + t`` of a token in the ``(B, L)`` grid and
    ``span_index[p]`` the flat index ``b * S + s`` of the span it belongs to in the ``(B, S)``
    grid; a token may appear in several pairs. ``span_mask`` marks real spans (``S`` is the
    largest span count of the batch).
    """

    token_index: Tensor  # (P,) long
    span_index: Tensor  # (P,) long
    span_mask: Tensor  # (B, S) bool
    seq_len: int

    @property
    def num_spans(self) -> int:
        return int(self.span_mask.shape[1])

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> SpanMembership:
        return replace(
            self,
            token_index=fn(self.token_index),
            span_index=fn(self.span_index),
            span_mask=fn(self.span_mask),
        )


@dataclass
class SpanGrid(_Tensors):
    """One grid of spans seen by both models: span ``s`` of sample ``b`` covers the same characters on
    both sides, each side listing its own tokens (MTA's word/phrase units, SRA's co-segmentation).
    With one shared tokenizer ``student is teacher``."""

    student: SpanMembership
    teacher: SpanMembership

    @property
    def span_mask(self) -> Tensor:
        """Spans present on both sides."""
        if self.student is self.teacher:
            return self.student.span_mask
        return self.student.span_mask & self.teacher.span_mask

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> SpanGrid:
        s = self.student.map_tensors(fn)
        return SpanGrid(s, s if self.teacher is self.student else self.teacher.map_tensors(fn))


@dataclass
class TokenPairs(_Tensors):
    """1:1 token pairs between the two tokenizations (ETA, MinED): pair ``p`` of sample ``b`` joins the
    student position ``student_pos[b, p]`` and the teacher position ``teacher_pos[b, p]``; ``mask`` marks
    real pairs (``P`` is the largest pair count of the batch, padded pairs point at position 0)."""

    student_pos: Tensor  # (B, P) long
    teacher_pos: Tensor  # (B, P) long
    mask: Tensor  # (B, P) bool

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> TokenPairs:
        return TokenPairs(fn(self.student_pos), fn(self.teacher_pos), fn(self.mask))


@dataclass
class SideBatch(_Tensors):
    """One model's view of a batch (its own tokenizer).

    ``labels`` are the next-token targets already aligned with ``input_ids`` (``-100`` where no
    loss is taken: prompt, padding); ``loss_mask = labels != -100``. ``offsets`` are character
    offsets ``(start, end)`` of each token in the batch's ``texts`` (``(0, 0)`` for special and
    padding tokens).
    """

    input_ids: Tensor  # (B, L) long
    attention_mask: Tensor  # (B, L) long
    labels: Tensor  # (B, L) long, -100 = ignored
    offsets: Tensor  # (B, L, 2) long

    @property
    def loss_mask(self) -> Tensor:
        return self.labels.ne(-100)

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> SideBatch:
        return SideBatch(*(fn(getattr(self, f.name)) for f in fields(self)))


@dataclass
class Batch(_Tensors):
    """A collated batch: both views of the same texts, and the alignments data preparation built.

    ``grids[name]``: span grids shared by both sides (:class:`SpanGrid`); ``pairs[name]``: 1:1 token
    pairs (:class:`TokenPairs`). Both are produced once per example by the annotators the method's
    objectives declare, never in the step.
    """

    student: SideBatch
    teacher: SideBatch
    texts: list[str]
    prompt_chars: list[int]  # character length of the prompt part of each text
    index: Tensor  # (B,) sample ids, for bookkeeping
    grids: dict[str, SpanGrid] = field(default_factory=dict)
    pairs: dict[str, TokenPairs] = field(default_factory=dict)
    # the student's real (non-padding) tokens, counted on the host at collate time: tokens/s
    # needs no device-to-host sync in the step
    num_tokens: int = 0

    @property
    def size(self) -> int:
        return int(self.student.input_ids.shape[0])

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        student = self.student.map_tensors(fn)
        return replace(
            self,
            student=student,
            teacher=student if self.teacher is self.student else self.teacher.map_tensors(fn),
            index=fn(self.index),
            grids={k: v.map_tensors(fn) for k, v in self.grids.items()},
            pairs={k: v.map_tensors(fn) for k, v in self.pairs.items()},
        )


#: how a captured attention layer is kept: the whole map, or only one query row per sample
ATTENTION_FORMS = ("full", "last_real", "last_position")


@dataclass(frozen=True)
class Needs:
    """What the objectives ask of one model's forward (merged over the objectives of a method).

    ``hidden_states`` are indices into HF ``hidden_states`` (0 = embeddings, ``n_layers`` = last; ``-1``
    also names the last, for objectives that need it before the models' depths are known).
    ``attentions`` are 0-based layers whose full ``(B, H, L, L)`` maps are kept; ``attention_rows``
    layers of which only one query row per sample ``(B, H, L)`` is kept: the last real token's
    (``attention_query="last_real"``) or the last padded position's (``"last_position"``). Only the named
    layers are captured, and a row is computed next to the fast attention kernel, never from a full map
    (:mod:`distillkit.models.attention`). ``head`` / ``embeddings``: the model's output head and
    input-embedding lookup as handles (:class:`ModelOutput`), never as a method's submodules.
    """

    logits: bool = True
    hidden_states: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()
    attention_rows: tuple[int, ...] = ()
    attention_query: str = "last_real"
    head: bool = False
    embeddings: bool = False

    def __post_init__(self):
        if self.attention_query not in ATTENTION_FORMS[1:]:
            raise ValueError(
                f"attention_query={self.attention_query!r}; valid: {', '.join(ATTENTION_FORMS[1:])}"
            )

    @property
    def any_attention(self) -> bool:
        return bool(self.attentions or self.attention_rows)

    def merge(self, other: Needs | None) -> Needs:
        if other is None:
            return self
        if self.attention_rows and other.attention_rows and self.attention_query != other.attention_query:
            raise ValueError(
                f"two objectives ask for attention rows at different queries "
                f"({self.attention_query!r} vs {other.attention_query!r})"
            )

        def union(a, b):
            return tuple(sorted(set(a) | set(b)))

        return Needs(
            logits=self.logits or other.logits,
            hidden_states=union(self.hidden_states, other.hidden_states),
            attentions=union(self.attentions, other.attentions),
            attention_rows=union(self.attention_rows, other.attention_rows),
            attention_query=self.attention_query if self.attention_rows else other.attention_query,
            head=self.head or other.head,
            embeddings=self.embeddings or other.embeddings,
        )


@dataclass
class ModelOutput:
    """One forward's typed outputs: only what was asked for.

    ``head`` maps hidden states to logits over the tokenizer's real vocabulary (``head.weight`` is the
    sliced ``(V, D)`` matrix); apply it only to the last hidden state (``hidden_states[n_layers]``, which
    is after the final norm in every supported family). ``embed`` maps token ids to input embeddings.
    Both are handles onto the model's own modules: a method never stores them.
    """

    logits: Tensor | None  # (B, L, V) with V the tokenizer's real vocabulary size
    hidden_states: dict[int, Tensor] = field(default_factory=dict)  # index -> (B, L, D)
    attentions: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, H, L, L)
    attention_rows: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, H, L)
    head: Any = None  # distillkit.models.handles.OutputHead
    embed: Any = None  # distillkit.models.handles.InputEmbedding
