"""Token-level KD: ``(1 - kd_rate) * CE + kd_rate * D(teacher, student)`` on response tokens.

``D`` is one of :data:`distillkit.losses.DIVERGENCES` (fkl, rkl, js, tvd, skl, srkl, akl) at a
temperature (logits divided by T, no T² factor, as DSKD). Needs one shared vocabulary: a pair
whose tokenizers differ is refused before training (use a cross-tokenizer method).
"""

from __future__ import annotations

from typing import Any

from distillkit.config import value
from distillkit.losses import cross_entropy, get_divergence
from distillkit.methods.base import Method, MethodSetupError
from distillkit.models.pair import same_vocabulary


class KD(Method):
    name = "kd"

    def __init__(
        self,
        divergence: str = "fkl",
        temperature: float = 1.0,
        kd_rate: float = 0.5,
        skew_lambda: float = 0.1,
        akl_mu: float = 0.5,
        chunk_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.divergence = value(divergence)
        self.divergence_fn = get_divergence(self.divergence)
        if temperature <= 0:
            raise MethodSetupError(f"method.temperature must be > 0, got {temperature}")
        if not 0.0 <= kd_rate <= 1.0:
            raise MethodSetupError(f"method.kd_rate must be in [0, 1], got {kd_rate}")
        self.temperature, self.kd_rate = float(temperature), float(kd_rate)
        self.params = {"skew_lambda": skew_lambda, "mu": akl_mu, "chunk_size": chunk_size}

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        if not same_vocabulary(teacher_tokenizer, student_tokenizer):
            raise MethodSetupError(
                f"method={self.name} is token-level KD and needs one shared vocabulary, but the teacher "
                f"({teacher_tokenizer.name_or_path}, {len(teacher_tokenizer)} tokens) and the student "
                f"({student_tokenizer.name_or_path}, {len(student_tokenizer)} tokens) have different tokenizers. "
                "Use a cross-tokenizer method, or a model pair with one tokenizer."
            )

    def structural_weights(self) -> dict[str, float]:
        return {"ce": 1.0 - self.kd_rate, "kd": self.kd_rate}

    def tags(self) -> dict[str, Any]:
        return {
            **super().tags(),
            "divergence": self.divergence,
            "temperature": self.temperature,
            "kd_rate": self.kd_rate,
        }

    def divergence_params(self) -> dict[str, Any]:
        wanted = {"skl": ("skew_lambda",), "srkl": ("skew_lambda",), "akl": ("mu",)}.get(self.divergence, ())
        out = {k: self.params[k] for k in wanted}
        if self.params["chunk_size"]:
            out["chunk_size"] = self.params["chunk_size"]
        return out

    def kd_term(self, student, teacher, batch):
        mask = batch.student.loss_mask
        return self.divergence_fn(
            student.logits, teacher.logits, mask, temperature=self.temperature, **self.divergence_params()
        )

    def forward(self, student, teacher, batch):
        terms = {}
        # CE is cheap from the student's logits: logged even at weight 0 (as a detached diagnostic)
        ce = cross_entropy(student.logits, batch.student.labels)
        terms["ce"] = ce if self.active("ce") else ce.detach()
        if self.active("kd"):
            terms["kd"] = self.kd_term(student, teacher, batch)
        return terms
