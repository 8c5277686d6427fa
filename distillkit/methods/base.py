"""The method contract.

A method is an ``nn.Module`` (so the projectors it owns train, checkpoint and resume with the
student; the exported HF student leaves them out). It:

1. **declares** what it needs from each forward: :attr:`student_needs`, :attr:`teacher_needs`
   (:class:`~distillkit.types.Needs`: logits, which ``hidden_states``, which attention maps;
   ``teacher_needs = None`` means no teacher forward at all, as for SFT), and which span unit
   sets the data must carry (:attr:`span_sets`);
2. **receives** the typed outputs of one forward per model (:class:`~distillkit.types.ModelOutput`)
   and the batch (:class:`~distillkit.types.Batch`), inside the training step;
3. **returns** a dict of named, unweighted loss terms (scalars). The module computes
   ``loss = Σ weights[name] * terms[name]`` and logs every term on its own.

``weights`` are the method's structural coefficients (e.g. ``1 - kd_rate`` for CE) times the
user's ``terms`` multipliers from the config, so ``method.terms.kd=0`` is an ablation. A term
whose weight is 0 is not computed (cheap diagnostics such as CE may still be returned detached:
they are logged, never added to the loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from distillkit.types import Batch, ModelOutput, Needs


class MethodSetupError(ValueError):
    """The method cannot run on this model pair or config; raised before training starts."""


class Method(nn.Module):
    name: str = "method"
    #: span unit sets the data must carry (e.g. {"word", "phrase"}); empty = no span parsing
    span_sets: frozenset[str] = frozenset()
    #: whether the method needs the cross-tokenizer co-segmentation in the batch
    needs_alignment: bool = False

    def __init__(self, terms: Mapping[str, float] | None = None, **_: Any):
        super().__init__()
        self.multipliers = dict(terms or {})

    # -- declared before training -------------------------------------------------------------
    #: attention implementation the models must use (``"eager"`` when attention maps are needed)
    attn_implementation: str | None = None

    def configure(self, cfg: Any) -> None:
        """Receives the composed run config (layer map, span parser, ...) before :meth:`setup`."""

    def check_tokenizers(self, teacher_tokenizer: Any, student_tokenizer: Any) -> None:
        """Cheap checks on the tokenizers alone, before any weights load (raise MethodSetupError)."""

    def annotators(self, cfg: Any, teacher: Any, student: Any) -> list:
        """Data-preparation steps this method needs (span parsing, alignment), run once per split."""
        return []

    def setup(self, teacher: Any, student: Any) -> None:
        """Check the pair and build projectors (``teacher``/``student``: LoadedModel). Raise
        :class:`MethodSetupError` with a clear message when the pair does not fit."""
        unknown = set(self.multipliers) - set(self.structural_weights())
        if unknown:
            raise MethodSetupError(
                f"method.terms has unknown term(s) {sorted(unknown)} for method {self.name!r}; "
                f"valid: {sorted(self.structural_weights())}"
            )

    @property
    def student_needs(self) -> Needs:
        return Needs(logits=True)

    @property
    def teacher_needs(self) -> Needs | None:
        return Needs(logits=True)

    def structural_weights(self) -> dict[str, float]:
        """Term name -> coefficient from the method's own knobs (kd_rate, w_span, ...)."""
        raise NotImplementedError

    @property
    def weights(self) -> dict[str, float]:
        return {k: w * float(self.multipliers.get(k, 1.0)) for k, w in self.structural_weights().items()}

    def active(self, term: str) -> bool:
        return self.weights.get(term, 0.0) != 0.0

    def tags(self) -> dict[str, Any]:
        """Ablation switches of this run (logged as tags in results.json and W&B)."""
        return {f"terms.{k}": v for k, v in self.multipliers.items()}

    # -- inside the step ---------------------------------------------------------------------
    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def param_groups(self, base_lr: float, projector_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups for the method's own parameters (projectors)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": projector_lr or base_lr, "name": "projectors"}] if params else []


def zero_like_graph(x: Tensor) -> Tensor:
    """A 0 that keeps the graph (for empty batches of a term)."""
    return (x.sum() * 0.0).float() if x.requires_grad else torch.zeros((), device=x.device)
