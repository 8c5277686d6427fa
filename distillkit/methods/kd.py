"""Token-level KD: the base term ``D(teacher, student)`` on the response tokens.

``D`` is one of :data:`distillkit.losses.DIVERGENCES` (fkl, rkl, js, tvd, skl, srkl, akl) at a
temperature (logits divided by T, no T² factor, as DSKD). As ``method=kd`` the total is
``(1 - kd_rate)·CE + kd_rate·D``. Needs one shared vocabulary: a pair whose tokenizers differ is
refused before any weights load (use a cross-tokenizer base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from distillkit.config import Divergence, value
from distillkit.losses import get_divergence
from distillkit.methods.base import MethodSetupError, Objective, ObjectiveConfig


@dataclass
class KDConfig(ObjectiveConfig):
    divergence: Divergence = Divergence.fkl  # fkl | rkl | js | tvd | skl | srkl | akl
    temperature: float = 1.0  # logits / T, no T² (DSKD 2.0; DistiLLM 1.0)
    skew_lambda: float = 0.1  # skl / srkl skew
    akl_mu: float = 0.5  # akl head/tail split
    # the divergence (and the method's CE) over chunks of this many counted positions, forward and
    # backward: the same loss and gradients, the largest float32 intermediate chunk_size x V instead of
    # N x V (a large vocabulary). None: unchunked (the fastest when memory allows)
    chunk_size: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise MethodSetupError(f"method.temperature must be > 0, got {self.temperature}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise MethodSetupError(f"method.chunk_size must be a positive int or null, got {self.chunk_size}")


class KD(Objective):
    name = "kd"
    kind = "base"
    Config = KDConfig
    token_sums = True

    def __init__(self, **knobs: Any):
        super().__init__(**knobs)
        self.divergence_fn = get_divergence(value(self.cfg.divergence))

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        from distillkit.models.pair import same_vocabulary  # (pair imports the config, which imports us)

        if not same_vocabulary(teacher_tokenizer, student_tokenizer):
            raise MethodSetupError(
                f"the {self.name} base objective compares the two models' distributions token by token and "
                f"needs one shared vocabulary, but the teacher ({teacher_tokenizer.name_or_path}, "
                f"{len(teacher_tokenizer)} tokens) and the student ({student_tokenizer.name_or_path}, "
                f"{len(student_tokenizer)} tokens) have different tokenizers. Use a cross-tokenizer base "
                "(method/base=...), or a model pair with one tokenizer."
            )

    def structural_weights(self) -> dict[str, float]:
        return {"kd": 1.0}

    def tags(self) -> dict[str, Any]:
        return {"divergence": value(self.cfg.divergence), "temperature": self.cfg.temperature}

    def divergence_params(self) -> dict[str, Any]:
        c = self.cfg
        params = {"skl": {"skew_lambda": c.skew_lambda}, "srkl": {"skew_lambda": c.skew_lambda}}
        out = dict(params.get(value(c.divergence), {"mu": c.akl_mu} if value(c.divergence) == "akl" else {}))
        if c.chunk_size:
            out["chunk_size"] = c.chunk_size
        return out

    def forward(self, student, teacher, batch, active):
        if "kd" not in active:
            return {}
        kd = self.divergence_fn(
            student.logits,
            teacher.logits,
            batch.student.loss_mask,
            temperature=self.cfg.temperature,
            reduction=self.reduction,
            **self.divergence_params(),
        )
        return {"kd": kd}
