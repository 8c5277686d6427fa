"""SFT: cross-entropy on the response tokens; no teacher forward.

As a method (``method=sft``) the loss is CE alone. As a base objective under an auxiliary one
(``method=mta method/base=sft``) it makes CE the base term: ``(1-kd_rate)·CE + kd_rate·(CE + aux)``.
"""

from __future__ import annotations

from distillkit.methods.base import Objective
from distillkit.types import Needs


class SFT(Objective):
    name = "sft"
    kind = "base"
    token_sums = True  # its one term is the method's CE

    @property
    def teacher_needs(self) -> Needs | None:
        return None

    def structural_weights(self) -> dict[str, float]:
        return {"ce": 1.0}  # the method computes CE once; this weight adds to the mixing one

    def forward(self, student, teacher, batch, active):
        return {}
