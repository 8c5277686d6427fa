"""ULD (Boizard et al.): sorted-probability L1 across two vocabularies, a base objective.

``uld = Σ_v |sort↓ q_S − sort↓ p_T|`` (zero-padded to the larger vocabulary) at position ``t`` of each
side's response, aligned at the first response label (the first ``labels != -100`` under distillkit's
shifted labels: no ``-1``, which two public ports get wrong), over the positions both sides have; T = 1
as the DSKD port (its ``KD_TEMP`` is ignored). Total ``(1-kd_rate)·CE + kd_rate·uld`` (kd_rate 0.5).
No in-place writes on the logits (the DSKD port rotates them in place). Purely positional: token
counts that drift apart pair unrelated positions (ctkd.md §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from distillkit.losses import uld_loss
from distillkit.methods.base import ObjectiveConfig
from distillkit.methods.xtok_common import XTokObjective


@dataclass
class ULDConfig(ObjectiveConfig):
    student_temperature: float = 1.0
    teacher_temperature: float = 1.0
    chunk_size: int | None = None


class ULD(XTokObjective):
    name = "uld"
    Config = ULDConfig
    token_sums = True

    def structural_weights(self) -> dict[str, float]:
        return {"uld": 1.0}

    def forward(self, student, teacher, batch, active):
        if "uld" not in active:
            return {}
        c = self.cfg
        return {
            "uld": uld_loss(
                student.logits,
                teacher.logits,
                batch.student.labels,
                batch.teacher.labels,
                student_temperature=c.student_temperature,
                teacher_temperature=c.teacher_temperature,
                chunk_size=c.chunk_size,
                reduction=self.reduction,
            )
        }
