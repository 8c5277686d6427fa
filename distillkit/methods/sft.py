"""SFT: cross-entropy on the response tokens; no teacher forward."""

from __future__ import annotations

from distillkit.losses import cross_entropy
from distillkit.methods.base import Method
from distillkit.types import Needs


class SFT(Method):
    name = "sft"

    @property
    def teacher_needs(self) -> Needs | None:
        return None

    def structural_weights(self) -> dict[str, float]:
        return {"ce": 1.0}

    def forward(self, student, teacher, batch):
        return {"ce": cross_entropy(student.logits, batch.student.labels)}
