"""MTA: Multi-Granular Trajectory Alignment (arXiv 2605.01374; papers.md §2).

For each mapped (teacher layer, student layer) pair, over that pair's span units (words for the
lower pairs, noun/verb phrases for the higher ones):

- **DSA** (Dynamic Structural Alignment): cosine Gram matrices of the span centres of mass on
  each side, per sample; squared difference weighted by the teacher span masses ``m_u m_v``.
- **HRA** (Hidden Representation Alignment): ``1 - cos(P h^S_t, h^T_t)`` over the tokens inside
  the units, weighted by the teacher's token weights; ``P`` is a ``Linear(d_s, d_t)`` per pair.

``L_MTA = mean_pairs(DSA + hra_factor * HRA)`` and the total is
``(1 - kd_rate) * CE + kd_rate * (KD + w_span * L_MTA)`` on top of the token-level KD base
(SRKL by default, the DistiLLM path). The terms ``dsa`` and ``hra`` are logged as pair means;
their weights carry ``kd_rate * w_span`` (and ``hra_factor``).
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.profiler import record_function

from distillkit.config import value
from distillkit.losses import dsa_loss, hra_loss
from distillkit.methods.base import MethodSetupError
from distillkit.methods.kd import KD
from distillkit.models.layer_map import LayerPair, resolve_layer_map
from distillkit.spans.pooling import (
    attention_received_weights,
    entropy_weights,
    normalize_in_spans,
    pool_spans,
    self_similarity_weights,
    token_mask_from_membership,
    uniform_weights,
)
from distillkit.types import Needs

WEIGHTS = ("self_similarity", "attention", "entropy", "uniform")
LEVELS = ("both", "word", "phrase")
PROJECTOR_INITS = ("default", "xavier", "zeros")


class MTA(KD):
    name = "mta"

    def __init__(
        self,
        w_span: float = 2.0,
        hra_factor: float = 0.1,
        level: str = "both",
        weights: str = "self_similarity",
        projector_init: str = "default",
        membership_rule: str = "reference",
        span_region: str = "all",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.w_span, self.hra_factor = float(w_span), float(hra_factor)
        self.level, self.weighting = value(level), value(weights)
        for what, got, valid in (
            ("level", self.level, LEVELS),
            ("weights", self.weighting, WEIGHTS),
            ("projector_init", projector_init, PROJECTOR_INITS),
        ):
            if got not in valid:
                raise MethodSetupError(f"method.{what}={got!r}; valid: {', '.join(valid)}")
        self.projector_init = projector_init
        self.membership_rule, self.span_region = membership_rule, span_region
        self.pairs: list[LayerPair] = []
        self.projectors = nn.ModuleList()
        self._span_tags: dict[str, Any] = {}

    # -- before training ---------------------------------------------------------------------------
    @property
    def attn_implementation(self) -> str | None:
        return "eager" if self.weighting == "attention" else None

    def configure(self, cfg: Any) -> None:
        """Called by the pipeline with the composed config (layer map, span parser)."""
        self._cfg = cfg

    def setup(self, teacher, student) -> None:
        super().setup(teacher, student)
        cfg = self._cfg
        self.pairs = resolve_layer_map(
            cfg.layer_map, cfg.model, teacher.num_layers, student.num_layers, self.level
        )
        d_s, d_t = student.hidden_size, teacher.hidden_size
        self.projectors = nn.ModuleList(nn.Linear(d_s, d_t) for _ in self.pairs)
        for proj in self.projectors:
            if self.projector_init == "xavier":
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)
            elif self.projector_init == "zeros":
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
        self._span_tags = {
            "span_parser": str(cfg.span_parser._target_).rsplit(".", 1)[-1],
            "word_units": cfg.span_parser.get("word_units"),
        }

    @property
    def span_sets(self) -> frozenset[str]:
        return frozenset(p.level for p in self.pairs)

    def annotators(self, cfg, teacher, student) -> list:
        from distillkit.data.annotate import span_annotator

        parser = instantiate(cfg.span_parser)
        return [
            span_annotator(
                parser, tuple(sorted(self.span_sets)), self.membership_rule, self.span_region, cfg.cache_dir
            )
        ]

    def structural_weights(self) -> dict[str, float]:
        base = super().structural_weights()
        return {
            **base,
            "dsa": self.kd_rate * self.w_span,
            "hra": self.kd_rate * self.w_span * self.hra_factor,
        }

    def tags(self) -> dict[str, Any]:
        return {
            **super().tags(),
            "level": self.level,
            "weights": self.weighting,
            "w_span": self.w_span,
            "num_pairs": len(self.pairs),
            "layer_map": [(p.teacher, p.student, p.level) for p in self.pairs],
            **self._span_tags,
        }

    def _needs(self, layers: list[int]) -> Needs:
        """Logits, the mapped hidden states, and (attention weights only) the attention maps that
        produce them: ``hidden_states[l]`` is the output of layer ``l - 1``."""
        att = tuple(sorted({max(i - 1, 0) for i in layers})) if self.weighting == "attention" else ()
        return Needs(logits=True, hidden_states=tuple(sorted(set(layers))), attentions=att)

    @property
    def student_needs(self) -> Needs:
        return self._needs([p.student for p in self.pairs])

    @property
    def teacher_needs(self) -> Needs:
        return self._needs([p.teacher for p in self.pairs])

    # -- in the step ---------------------------------------------------------------------------------
    def _token_weights(self, out, layer: int, hidden: Tensor, mask: Tensor, teacher_logits: Tensor | None):
        if self.weighting == "uniform":
            return uniform_weights(mask)
        if self.weighting == "attention":
            return attention_received_weights(out.attentions[max(layer - 1, 0)], mask)
        if self.weighting == "entropy" and teacher_logits is not None:
            return entropy_weights(teacher_logits, mask)
        return self_similarity_weights(hidden, mask)

    def forward(self, student, teacher, batch):
        """KD terms plus ``dsa`` and ``hra``, each the mean over the mapped pairs.

        Work shared between pairs is done once per step: the token weights of a (model, layer) and the
        in-unit token mask of a membership. The stages are labelled for ``torch.profiler``
        (``mta.weights``, ``mta.pooling``, ``mta.dsa``, ``mta.projector``, ``mta.hra``).
        """
        terms = super().forward(student, teacher, batch)
        want_dsa, want_hra = self.active("dsa"), self.active("hra")
        if not (want_dsa or want_hra):
            return terms
        s_side, t_side = batch.student, batch.teacher
        s_mask, t_mask = s_side.attention_mask, t_side.attention_mask
        entropy_logits = teacher.logits if self.weighting == "entropy" else None
        inside_masks: dict[int, Tensor] = {}  # id(membership) -> (B, L) tokens inside its units
        raw_weights: dict[tuple[str, int], Tensor] = {}  # (side, layer) -> token weights
        unit_weights: dict[tuple[str, int, int], Tensor] = {}  # + id(membership) -> renormalized

        def inside(membership) -> Tensor:
            if id(membership) not in inside_masks:
                B = membership.span_mask.shape[0]
                inside_masks[id(membership)] = token_mask_from_membership(membership, B, membership.seq_len)
            return inside_masks[id(membership)]

        def weights(side: str, layer: int, membership) -> Tensor:
            """One model layer's token weights, renormalized over the units of ``membership``."""
            if (side, layer) not in raw_weights:
                if side == "student":
                    h = student.hidden_states[layer].detach()
                    raw = self._token_weights(student, layer, h, s_mask, None)
                else:
                    h = teacher.hidden_states[layer].float()
                    raw = self._token_weights(teacher, layer, h, t_mask, entropy_logits)
                raw_weights[side, layer] = raw
            key = (side, layer, id(membership))
            if key not in unit_weights:
                # same-tokenizer path: weights of tokens inside the units sum to one per sample
                unit_weights[key] = normalize_in_spans(
                    raw_weights[side, layer], membership, inside=inside(membership)
                )
            return unit_weights[key]

        dsa, hra = [], []
        for k, pair in enumerate(self.pairs):
            s_mem, t_mem = s_side.spans[pair.level], t_side.spans[pair.level]
            h_s, h_t = student.hidden_states[pair.student], teacher.hidden_states[pair.teacher].float()
            with record_function("mta.weights"):
                w_s = weights("student", pair.student, s_mem)
                w_t = weights("teacher", pair.teacher, t_mem)
            if want_dsa:
                with record_function("mta.pooling"):
                    c_s, _ = pool_spans(h_s, s_mem, w_s)
                    c_t, m_t = pool_spans(h_t, t_mem, w_t)
                with record_function("mta.dsa"):
                    dsa.append(dsa_loss(c_s, c_t, m_t, s_mem.span_mask & t_mem.span_mask))
                del c_s, c_t, m_t
            if want_hra:
                with record_function("mta.projector"):
                    projected = self.projectors[k](h_s.float())
                with record_function("mta.hra"):
                    hra.append(hra_loss(projected, h_t, w_t, inside(s_mem)))
                del projected  # only the loss's own saved tensors stay alive for the backward
        if dsa:
            terms["dsa"] = torch.stack(dsa).mean()
        if hra:
            terms["hra"] = torch.stack(hra).mean()
        return terms
