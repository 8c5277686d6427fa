"""DSKDv2 with exact token alignment (``songmzhang/DSKDv2@5025279``, ctkd.md §3.5), a base objective.

Computed once: the space-normalized shared vocabulary (``Ġ`` = ``▁``; ``distillkit.vocab``, cached), the
teacher-id -> student-id table (-1 = unmapped), the pseudo-inverse projector init over the overlap in
float32 (``W_t2s = (W^o_T pinv(W^o_S))^T``, trainable, lr 5e-4; ``pinv(W^o_T)`` fixed), and, per example
in data preparation, the exact alignment of the response LABEL tokens (``batch.pairs["eta"]``; EOS with
EOS). In the step, at the pairs: ``t2s_ce = CE(t2s_logits, y~)`` with ``y~`` the teacher's argmax as a
student id; ``t2s_kd = D(teacher = t2s.detach(), student = z^S)`` where the t2s argmax agrees with ``y~``;
``s2t_kd = D(teacher = z^T, student = head_T(h^S W_s2t))`` with ``W_s2t = W^o_S pinv(W^o_T)`` rebuilt each
step from the current student head. Total ``(1-kd_rate)·CE + kd_rate·(t2s_ce + t2s_kd + s2t_kd)``
(kd_rate 0.5, T 2.0, FKL).

The reference's bugs, fixed (each documented in :func:`distillkit.losses.eta_terms`): a teacher
prediction outside the student vocabulary is unmapped and its pair dropped, never the student's
``unk`` (GPT-2's EOS); the t2s projector is in the optimizer and in the checkpoint; the pinv stays
float32; the s2t matrix uses the overlap's own student ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distillkit.config import value
from distillkit.losses import eta_pinv_init, eta_s2t_matrix, eta_terms
from distillkit.methods.base import MethodSetupError
from distillkit.methods.xtok_common import DUAL_SPACE_TERMS as TERMS
from distillkit.methods.xtok_common import DualSpaceObjective, XTokConfig


@dataclass
class DSKDv2ETAConfig(XTokConfig):
    projector_lr: float | None = 5e-4
    t2s_agreement: float = 1.0  # DSKDv2's default: t2s_kd always masked to the agreeing pairs
    pair_eos: bool = True  # EOS pairs with EOS
    topk_vocab: int | None = None  # keep the first k overlap pairs in the pinv (None: all)
    min_overlap: float = 0.05  # fail in setup below this overlap fraction of the smaller vocabulary


class DSKDv2ETA(DualSpaceObjective):
    name = "dskdv2_eta"
    Config = DSKDv2ETAConfig

    def __init__(self, **knobs):
        super().__init__(**knobs)
        for name in ("overlap_student_ids", "teacher_to_student", "pinv_teacher"):
            self.register_buffer(name, torch.zeros(0), persistent=False)  # derived from the pair in setup

    def _vmap(self, teacher_tok, student_tok):
        from distillkit.vocab import require_overlap, vocab_map

        vmap = vocab_map(teacher_tok, student_tok, "space", cache_root=self.cfg.cache_dir)
        try:
            require_overlap(vmap, self.cfg.min_overlap, "min_overlap")
        except ValueError as err:
            raise MethodSetupError(
                f"dskdv2_eta: {err} (method.min_overlap, or method.base.min_overlap)"
            ) from None
        return vmap

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        self._vmap(teacher_tokenizer, student_tokenizer)

    def annotators(self, teacher, student):
        from distillkit.spans.token_pairs import eta_pairs_annotator

        return [eta_pairs_annotator(student.tokenizer, teacher.tokenizer, pair_eos=self.cfg.pair_eos)]

    def setup(self, teacher, student) -> None:
        self.n_s, self.n_t = student.num_layers, teacher.num_layers
        self.s_eos, self.t_eos = int(student.tokenizer.eos_token_id), int(teacher.tokenizer.eos_token_id)
        vmap = self._vmap(teacher.tokenizer, student.tokenizer)
        s_ids, t_ids = vmap.overlap()
        w_t2s, pinv_t = eta_pinv_init(
            student.head().weight, teacher.head().weight, s_ids, t_ids, topk=self.cfg.topk_vocab
        )
        self.t2s = nn.Linear(teacher.hidden_size, student.hidden_size, bias=False)
        with torch.no_grad():
            self.t2s.weight.copy_(w_t2s)
        self.overlap_student_ids = s_ids
        self.pinv_teacher = pinv_t
        self.teacher_to_student = vmap.t2s.long()

    def forward(self, student, teacher, batch, active):
        if not active & set(TERMS):
            return {}
        if "eta" not in batch.pairs:
            raise MethodSetupError(
                "dskdv2_eta needs the ETA token pairs of data preparation (batch.pairs['eta'])"
            )
        pairs = batch.pairs["eta"]
        s2t = eta_s2t_matrix(student.head.weight, self.overlap_student_ids, self.pinv_teacher)
        out = eta_terms(
            student.hidden_states[-1],
            teacher.hidden_states[-1],
            student.logits,
            teacher.logits,
            pairs.student_pos,
            pairs.teacher_pos,
            pairs.mask,
            student.head.weight,
            teacher.head,
            self.t2s,
            s2t,
            self.teacher_to_student,
            self.s_eos,
            self.t_eos,
            divergence=value(self.cfg.divergence),
            temperature=self.cfg.temperature,
            t2s_agreement=self.cfg.t2s_agreement,
            **self.divergence_kwargs(),
        )
        return {k: out[k] for k in TERMS}
