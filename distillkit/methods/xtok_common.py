"""Pieces the cross-tokenizer base objectives share: their knobs, and projector construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from distillkit.config import Divergence
from distillkit.methods.base import Objective, ObjectiveConfig
from distillkit.types import Needs


@dataclass
class XTokConfig(ObjectiveConfig):
    divergence: Divergence = Divergence.fkl  # D of the t2s / positional terms (DSKD scripts: fkl)
    temperature: float = 2.0  # KD_TEMP of the DSKD scripts (no T²)
    skew_lambda: float = 0.1
    akl_mu: float = 0.5
    # the objective's own projector learning rate (the reference's); null: trainer.optim.projector_lr
    projector_lr: Optional[float] = None
    cache_dir: Optional[str] = None  # vocabulary maps are cached under <cache_dir>/vocab


class XTokObjective(Objective):
    """A base objective with projectors in a group at ``cfg.projector_lr`` (the reference's), else at
    ``trainer.optim.projector_lr``, else the student's lr."""

    kind = "base"

    def divergence_kwargs(self) -> dict[str, Any]:
        from distillkit.config import value

        d = value(self.cfg.divergence)
        if d in ("skl", "srkl"):
            return {"skew_lambda": self.cfg.skew_lambda}
        if d == "akl":
            return {"mu": self.cfg.akl_mu}
        return {}

    def param_groups(self, base_lr: float, projector_lr: float | None) -> list[dict[str, Any]]:
        return super().param_groups(base_lr, getattr(self.cfg, "projector_lr", None) or projector_lr)


def linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """DSKD's projector: ``nn.Linear`` with PyTorch's default init (``projector_config.json``)."""
    return nn.Linear(d_in, d_out, bias=bias)


#: the dual-space terms of DSKD, DSKD-CMA and DSKDv2-ETA: kd = t2s_ce + t2s_kd + s2t_kd
DUAL_SPACE_TERMS = ("t2s_ce", "t2s_kd", "s2t_kd")


class DualSpaceObjective(XTokObjective):
    """The DSKD family: the three dual-space terms at weight 1, both last hidden states and both heads."""

    def structural_weights(self) -> dict[str, float]:
        return dict.fromkeys(DUAL_SPACE_TERMS, 1.0)

    def tags(self) -> dict[str, Any]:
        from distillkit.config import value

        return {"divergence": value(self.cfg.divergence), "temperature": self.cfg.temperature}

    @property
    def student_needs(self) -> Needs:
        return Needs(logits=True, hidden_states=(-1,), head=True)

    @property
    def teacher_needs(self) -> Needs:
        return Needs(logits=True, hidden_states=(-1,), head=True)
