"""The typed contract between data, the LightningModule and the methods.

A batch holds one :class:`SideBatch` per model (each model's own tokenizer, with
character offsets into the same text), the module runs each forward once and hands
the method a :class:`ModelOutput` per model, restricted to what the method declared
in its :class:`Needs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

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


@dataclass
class SpanMembership:
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

    def to(self, device: torch.device | str) -> SpanMembership:
        return replace(
            self,
            token_index=self.token_index.to(device, non_blocking=True),
            span_index=self.span_index.to(device, non_blocking=True),
            span_mask=self.span_mask.to(device, non_blocking=True),
        )


@dataclass
class SideBatch:
    """One model's view of a batch (its own tokenizer).

    ``labels`` are the next-token targets already aligned with ``input_ids`` (``-100`` where no
    loss is taken: prompt, padding); ``loss_mask = labels != -100``. ``offsets`` are character
    offsets ``(start, end)`` of each token in the batch's ``texts`` (``(0, 0)`` for special and
    padding tokens). ``spans`` maps a unit set name (``word``, ``phrase``, ``aligned``) to its
    membership.
    """

    input_ids: Tensor  # (B, L) long
    attention_mask: Tensor  # (B, L) long
    labels: Tensor  # (B, L) long, -100 = ignored
    offsets: Tensor  # (B, L, 2) long
    spans: dict[str, SpanMembership] = field(default_factory=dict)

    @property
    def loss_mask(self) -> Tensor:
        return self.labels.ne(-100)

    def to(self, device: torch.device | str) -> SideBatch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved, spans={k: v.to(device) for k, v in self.spans.items()})


@dataclass
class Batch:
    """A collated batch: both views of the same texts."""

    student: SideBatch
    teacher: SideBatch
    texts: list[str]
    prompt_chars: list[int]  # character length of the prompt part of each text
    index: Tensor  # (B,) sample ids, for bookkeeping
    # cross-tokenizer co-segmentation memberships (same span grid on both sides), if any
    aligned: dict[str, SpanMembership] = field(default_factory=dict)
    # the student's real (non-padding) tokens, counted on the host at collate time: tokens/s
    # needs no device-to-host sync in the step
    num_tokens: int = 0

    @property
    def size(self) -> int:
        return int(self.student.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            student=self.student.to(device),
            teacher=self.teacher.to(device) if self.teacher is not self.student else self.student.to(device),
            index=self.index.to(device),
            aligned={k: v.to(device) for k, v in self.aligned.items()},
        )


@dataclass(frozen=True)
class Needs:
    """What a method asks of one model's forward.

    ``hidden_states`` are indices into HF ``hidden_states`` (0 = embeddings, ``n_layers`` = last);
    ``attentions`` are 0-based layer indices whose attention maps are needed (forces eager attention).
    """

    logits: bool = True
    hidden_states: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()

    def merge(self, other: Needs) -> Needs:
        return Needs(
            logits=self.logits or other.logits,
            hidden_states=tuple(sorted(set(self.hidden_states) | set(other.hidden_states))),
            attentions=tuple(sorted(set(self.attentions) | set(other.attentions))),
        )


@dataclass
class ModelOutput:
    """One forward's typed outputs: only what was asked for."""

    logits: Tensor | None  # (B, L, V) with V the tokenizer's real vocabulary size
    hidden_states: dict[int, Tensor] = field(default_factory=dict)  # index -> (B, L, D)
    attentions: dict[int, Tensor] = field(default_factory=dict)  # layer -> (B, H, L, L)
