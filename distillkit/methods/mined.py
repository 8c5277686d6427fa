"""MinED (FuseLLM; DSKD's re-implementation): forward KL to teacher logits mapped by minimum edit distance.

Computed once: the teacher -> student vocabulary map by minimum edit distance (``distillkit.vocab``,
cached by both vocabularies' hashes; ``python -m distillkit.vocab build --kind mined`` builds it ahead of
time) and, per example in data preparation, the DTW alignment of the two response tokenizations as 1:1
pairs (``batch.pairs["mined"]``; DSKD runs a pure-Python DTW every step). In the step: at a pair whose
student input id is the map of the teacher's, the target is the teacher's logits gathered through
``stu2tea`` (-1e5 where a student id has no teacher pre-image); elsewhere a one-hot (+100 on the gold
label). ``mined = KL(p_aligned ‖ q_S)`` at T (2.0). Total ``(1-kd_rate)·CE + kd_rate·mined``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from distillkit.losses import mined_loss
from distillkit.methods.base import MethodSetupError, ObjectiveConfig
from distillkit.methods.xtok_common import XTokObjective
from distillkit.types import Needs


@dataclass
class MinEDConfig(ObjectiveConfig):
    temperature: float = 2.0
    workers: Optional[int] = None  # threads of the edit-distance search (default: all cores)
    cache_dir: Optional[str] = None


class MinED(XTokObjective):
    name = "mined"
    Config = MinEDConfig
    token_sums = True

    def __init__(self, **knobs):
        super().__init__(**knobs)
        self.register_buffer("stu2tea", torch.zeros(0, dtype=torch.long), persistent=False)
        self._vmap = None

    def _map(self, teacher_tok, student_tok):
        from distillkit.vocab import vocab_map

        if self._vmap is None:
            self._vmap = vocab_map(
                teacher_tok, student_tok, "mined", workers=self.cfg.workers, cache_root=self.cfg.cache_dir
            )
        return self._vmap

    def annotators(self, teacher, student):
        from distillkit.spans.token_pairs import mined_pairs_annotator

        vmap = self._map(teacher.tokenizer, student.tokenizer)
        return [mined_pairs_annotator(student.tokenizer, teacher.tokenizer, tea2stu=vmap.t2s)]

    def setup(self, teacher, student) -> None:
        self.stu2tea = self._map(teacher.tokenizer, student.tokenizer).stu2tea()
        # the id ranges checked once here, so the step need not read them back from the device
        if self.stu2tea.numel() and int(self.stu2tea.max()) >= teacher.vocab_size:
            raise MethodSetupError(
                f"the MinED map points at teacher id {int(self.stu2tea.max())} but the teacher has "
                f"{teacher.vocab_size} logits; rebuild the map (python -m distillkit.vocab)"
            )

    def structural_weights(self) -> dict[str, float]:
        return {"mined": 1.0}

    @property
    def student_needs(self) -> Needs:
        return Needs(logits=True)

    def forward(self, student, teacher, batch, active):
        if "mined" not in active:
            return {}
        pairs = batch.pairs["mined"]
        return {
            "mined": mined_loss(
                student.logits,
                teacher.logits,
                batch.student.labels,
                pairs.student_pos,
                pairs.teacher_pos,
                pairs.mask,
                self.stu2tea,
                temperature=self.cfg.temperature,
                reduction=self.reduction,
                validate=False,
            )
        }
