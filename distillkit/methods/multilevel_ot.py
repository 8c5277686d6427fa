"""MultiLevelOT (Cui et al., AAAI-25) with the official code's semantics (``2018cx/Multi-Level-OT``).

Per side, logits z-normalized per position (÷ std), softmax over the response positions, columns
ordered by their total mass over the batch (one permutation per model; ``column_order``), the top 50
kept; then ``token`` = L1 between the two sides' rows (over the shared response length), ``kl`` = the
0.1-weighted ``KL_wo`` (softmax re-applied on the probability rows), ``ot`` = the 0.1-weighted Sinkhorn
sequence-level OT (cost L1 between positions, ε 0.1, 10 iterations, ×0.001; batched, float32). The port
variants (per-position sort, the dropped 0.1 factors) are options of :func:`distillkit.losses.multilevel_ot_loss`.
Total ``(1-kd_rate)·CE + kd_rate·(token + 0.1·kl + 0.1·ot)``; the official scripts use kd_rate 0.5 with
CE weight 1 (``L = CE + KD``): set ``method.kd_rate``/``terms`` to match either (ctkd.md §3.6).
"""

from __future__ import annotations

from dataclasses import dataclass

from distillkit.losses import multilevel_ot_loss
from distillkit.methods.base import ObjectiveConfig
from distillkit.methods.xtok_common import XTokObjective


@dataclass
class MultiLevelOTConfig(ObjectiveConfig):
    temperature: float = 1.0
    top_k: int = 50
    column_order: str = "mass"
    kl_weight: float = 0.1
    ot_weight: float = 0.1


class MultiLevelOT(XTokObjective):
    name = "multilevel_ot"
    Config = MultiLevelOTConfig

    def structural_weights(self) -> dict[str, float]:
        return {"ot_token": 1.0, "ot_kl": self.cfg.kl_weight, "ot_seq": self.cfg.ot_weight}

    def forward(self, student, teacher, batch, active):
        if not active & {"ot_token", "ot_kl", "ot_seq"}:
            return {}
        c = self.cfg
        out = multilevel_ot_loss(
            student.logits,
            teacher.logits,
            batch.student.labels,
            batch.teacher.labels,
            temperature=c.temperature,
            top_k=c.top_k,
            column_order=c.column_order,
            kl_weight=c.kl_weight,
            ot_weight=c.ot_weight,
        )
        return {"ot_token": out["token"], "ot_kl": out["kl"], "ot_seq": out["ot"]}
