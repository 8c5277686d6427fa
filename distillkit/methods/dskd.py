"""DSKD (Zhang et al.): dual-space KD, on one vocabulary (``dskd``) and across two with cross-model
attention (``dskd_cma``); base objectives (``songmzhang/DSKD@077337ac``, ctkd.md §3.3-3.4).

``dskd`` (``dual_space_kd.py``), on the response rows of one tokenization::

    t2s_ce = CE(Proj_t2s(h^T) @ W_S.detach()^T, y)                 # trains Proj_t2s only
    t2s_kd = D(teacher = t2s_logits.detach(), student = z^S) at T
    s2t_kd = KL(p_T ‖ softmax(head_T(Proj_s2t(h^S)) / T))          # forward KL through the frozen head

``dskd_cma`` (``dual_space_kd_with_cross_model_attention.py``): the teacher states are carried to the
student's positions (and back) by attention between ``Proj_query([E_S(x); E_S(y)])`` and
``[E_T(x); E_T(y)]/std`` restricted to response x response; ``t2s_kd`` only where the t2s argmax equals
the student label. Total ``(1-kd_rate)·CE + kd_rate·(t2s_ce + t2s_kd + s2t_kd)`` (kd_rate 0.5, T 2.0).
The projectors are ``nn.Linear`` with bias and PyTorch's default init (``projector_config.json``: t2s
t->s, s->t, query 2s->2t), trained at lr 1e-3 (``method.projector_lr``). The heads and input embeddings
come through the model handles, for every family (the reference's GPT-2-teacher embedding lookup tests
the wrong attribute and raises).
"""

from __future__ import annotations

from dataclasses import dataclass

from distillkit.config import value
from distillkit.losses import dskd_cma_terms, dskd_terms
from distillkit.methods.base import MethodSetupError
from distillkit.methods.xtok_common import DUAL_SPACE_TERMS, DualSpaceObjective, XTokConfig, linear
from distillkit.types import Needs

TERMS = DUAL_SPACE_TERMS


@dataclass
class DSKDConfig(XTokConfig):
    projector_lr: float | None = 1e-3


class DSKD(DualSpaceObjective):
    name = "dskd"
    Config = DSKDConfig
    token_sums = True

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        from distillkit.models.pair import same_vocabulary

        if not same_vocabulary(teacher_tokenizer, student_tokenizer):
            raise MethodSetupError(
                "dskd needs one shared vocabulary (the t2s CE trains on the student's labels through the "
                "teacher's positions); across tokenizers use dskd_cma or dskdv2_eta"
            )

    def setup(self, teacher, student) -> None:
        self.n_s, self.n_t = student.num_layers, teacher.num_layers
        self.t2s = linear(teacher.hidden_size, student.hidden_size)
        self.s2t = linear(student.hidden_size, teacher.hidden_size)

    def forward(self, student, teacher, batch, active):
        if not active & set(TERMS):
            return {}
        return dskd_terms(
            student.hidden_states[-1],
            teacher.hidden_states[-1],
            student.logits,
            teacher.logits,
            batch.student.labels,
            student.head.weight,
            teacher.head,
            self.t2s,
            self.s2t,
            teacher_labels=batch.teacher.labels,
            divergence=value(self.cfg.divergence),
            temperature=self.cfg.temperature,
            reduction=self.reduction,
            **self.divergence_kwargs(),
        )


@dataclass
class DSKDCMAConfig(DSKDConfig):
    teacher_temperature: float = 1.0
    std_scope: str = "all"  # all (the reference: one std over the whole tensor) | response


class DSKDCMA(DSKD):
    name = "dskd_cma"
    Config = DSKDCMAConfig

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        """Works on one or two vocabularies (the attention aligns positions, not tokens)."""

    def setup(self, teacher, student) -> None:
        super().setup(teacher, student)
        d_s, d_t = student.hidden_size, teacher.hidden_size
        d_es = student.model.get_input_embeddings().embedding_dim
        d_et = teacher.model.get_input_embeddings().embedding_dim
        if d_et != d_t:
            raise MethodSetupError(
                f"dskd_cma adds the teacher's target embeddings to its states, so they need one width; "
                f"the teacher's embedding is {d_et} wide and its states {d_t} (OPT's word_embed_proj_dim)"
            )
        self.query = linear(2 * d_es, 2 * d_t)
        self.t2s = linear(d_t, d_s)
        self.s2t = linear(d_s, d_t)

    @property
    def student_needs(self) -> Needs:
        return Needs(logits=True, hidden_states=(-1,), head=True, embeddings=True)

    @property
    def teacher_needs(self) -> Needs:
        return Needs(logits=True, hidden_states=(-1,), head=True, embeddings=True)

    def forward(self, student, teacher, batch, active):
        if not active & set(TERMS):
            return {}
        s, t = batch.student, batch.teacher
        return dskd_cma_terms(
            student.hidden_states[-1],
            teacher.hidden_states[-1],
            student.logits,
            teacher.logits,
            s.input_ids,
            s.labels,
            t.input_ids,
            t.labels,
            student.embed,
            teacher.embed,
            student.head.weight,
            teacher.head.weight,
            self.query,
            self.t2s,
            self.s2t,
            divergence=value(self.cfg.divergence),
            temperature=self.cfg.temperature,
            teacher_temperature=self.cfg.teacher_temperature,
            std_scope=self.cfg.std_scope,
            reduction=self.reduction,
            **self.divergence_kwargs(),
        )
