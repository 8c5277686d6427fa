"""MTA: Multi-Granular Trajectory Alignment (arXiv 2605.01374; papers.md §2), an auxiliary objective.

For each mapped (teacher layer, student layer) pair, over that pair's span units (words for the
lower pairs, noun/verb phrases for the higher ones):

- **DSA** (Dynamic Structural Alignment): cosine Gram matrices of the span centres of mass on
  each side, per sample; squared difference weighted by the teacher span masses ``m_u m_v``.
- **HRA** (Hidden Representation Alignment): ``1 - cos(P h^S_t, h^T_t)`` over the tokens inside
  the units, weighted by the teacher's token weights; ``P`` is a ``Linear(d_s, d_t)`` per pair.

``L_MTA = mean_pairs(DSA + hra_factor * HRA)``. On its base objective (``method/base``; the preset
``method=mta`` stands on KD with SRKL, the DistiLLM path) the total is
``(1 - kd_rate) * CE + kd_rate * (base + w_span * L_MTA)``. The terms ``dsa`` and ``hra`` are logged
as pair means; their weights carry ``w_span`` (and ``hra_factor``). The spans come from the span
parser this objective is given, parsed once in data preparation (:meth:`MTA.annotators`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from distillkit.config import Level, TokenWeights, value
from distillkit.losses import dsa_loss, hra_loss
from distillkit.methods.base import MethodSetupError, Objective, ObjectiveConfig
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


class ProjectorInit(str, Enum):
    default = "default"  # PyTorch's Linear init (the reference)
    xavier = "xavier"
    zeros = "zeros"


class MembershipRule(str, Enum):
    reference = (
        "reference"  # token t in span s iff start(t)+1 >= s.start and end(t) <= s.end (papers.md §2.1)
    )
    exact = "exact"  # the token's characters lie inside the span


class QueryRows(str, Enum):
    all = "all"  # self-similarity column mean over all L query rows, padding rows included (reference)
    valid = "valid"  # over the real query rows only (distillkit's earlier choice)


class MultiUnit(str, Enum):
    per_pair = "per_pair"  # a token inside k units counts k times (the reference's (token, unit) pairs)
    once = "once"  # a token counts once however many units hold it (distillkit's earlier choice)


class EntropyScope(str, Enum):
    masses = "masses"  # entropy weights replace the teacher's span masses and HRA weights only (reference)
    all = "all"  # they also pool the teacher centres (distillkit's earlier choice)


class UniformMass(str, Enum):
    ones = "ones"  # weights=uniform: token weights 1 and every span mass 1 (the reference's --no-weight)
    shares = "shares"  # uniform weights renormalized per sample: masses become token shares (earlier)


class SpanRegion(str, Enum):
    all = "all"  # prompt + response (the reference)
    response = "response"


@dataclass
class MTAConfig(ObjectiveConfig):
    w_span: float = 2.0  # weight of L_MTA
    hra_factor: float = 0.1  # L_pair = DSA + hra_factor * HRA
    level: Level = Level.both  # both (first `layer_map.word_pairs` pairs word level) | word | phrase
    weights: TokenWeights = TokenWeights.self_similarity
    projector_init: ProjectorInit = ProjectorInit.default
    membership_rule: MembershipRule = MembershipRule.reference
    span_region: SpanRegion = SpanRegion.all
    # cross-tokenizer reference (ctkd.md §3.9, MTA-DSKD2@7831d10): weights normalized over the whole
    # sequence (false) instead of over the in-span tokens (true, the same-tokenizer reference), and the
    # student centres compared unprojected (false) or through P_k (true, voluyen@18ef54b2)
    in_span_normalization: bool = True
    project_student: bool = False
    # the reference's rules (docs/fidelity.md, MTA): each default is the authors' code, the other ours
    ss_query_rows: QueryRows = QueryRows.all
    multi_unit: MultiUnit = MultiUnit.per_pair
    entropy_scope: EntropyScope = EntropyScope.masses
    uniform_mass: UniformMass = UniformMass.ones
    # wiring (conf/method/mta.yaml interpolates them from the run config)
    layer_map: Any = None  # the `layer_map` group's node
    reference_layers: Any = None  # {pair, teacher, student}: the model pair's reference map
    span_parser: Any = None  # a distillkit.spans.parsers.SpanParser (the `span_parser` group)
    cache_dir: Optional[str] = None  # span parses are cached under <cache_dir>/spans


class MTA(Objective):
    name = "mta"
    kind = "aux"
    Config = MTAConfig

    def __init__(self, **knobs: Any):
        super().__init__(**knobs)
        self.w_span, self.hra_factor = float(self.cfg.w_span), float(self.cfg.hra_factor)
        self.level, self.weighting = value(self.cfg.level), value(self.cfg.weights)
        self.pairs: list[LayerPair] = []
        self.projectors = nn.ModuleList()

    # -- before training ---------------------------------------------------------------------------
    def resolve_pairs(self, n_teacher: int, n_student: int) -> list[LayerPair]:
        """The mapped layer pairs for models of these depths (out-of-range indices fail, naming the depth)."""
        ref = self.cfg.reference_layers or {}
        pair = SimpleNamespace(
            name=ref.get("pair", "custom"),
            teacher_layers=list(ref.get("teacher") or []),
            student_layers=list(ref.get("student") or []),
        )
        if self.cfg.layer_map is None:
            raise ValueError("MTA needs a layer map (the layer_map group); none was given")
        return resolve_layer_map(
            SimpleNamespace(**dict(self.cfg.layer_map)), pair, n_teacher, n_student, self.level
        )

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        from distillkit.models.pair import same_vocabulary

        if self.hra_factor != 0 and not same_vocabulary(teacher_tokenizer, student_tokenizer):
            raise MethodSetupError(
                "MTA's HRA term compares the two models' states token by token and needs one tokenizer, but "
                "the teacher and the student tokenize differently; set method.hra_factor=0 (the cross-"
                "tokenizer MTA reference has no HRA term: ctkd.md §3.9)"
            )

    def setup(self, teacher, student) -> None:
        self.pairs = self.resolve_pairs(teacher.num_layers, student.num_layers)
        d_s, d_t = student.hidden_size, teacher.hidden_size
        self.projectors = nn.ModuleList(nn.Linear(d_s, d_t) for _ in self.pairs)
        init = value(self.cfg.projector_init)
        for proj in self.projectors:
            if init == "xavier":
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)
            elif init == "zeros":
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    @property
    def span_sets(self) -> tuple[str, ...]:
        return tuple(sorted({p.level for p in self.pairs}))

    def annotators(self, teacher, student) -> list:
        from distillkit.data.annotate import span_annotator

        if self.cfg.span_parser is None:
            raise ValueError("MTA needs a span parser (the span_parser group); none was given")
        return [
            span_annotator(
                self.cfg.span_parser,
                self.span_sets,
                value(self.cfg.membership_rule),
                value(self.cfg.span_region),
                self.cfg.cache_dir,
            )
        ]

    def structural_weights(self) -> dict[str, float]:
        return {"dsa": self.w_span, "hra": self.w_span * self.hra_factor}

    def tags(self) -> dict[str, Any]:
        parser = self.cfg.span_parser
        return {
            "level": self.level,
            "weights": self.weighting,
            "w_span": self.w_span,
            "num_pairs": len(self.pairs),
            "layer_map": [(p.teacher, p.student, p.level) for p in self.pairs],
            "span_parser": type(parser).__name__ if parser is not None else None,
            "word_units": getattr(parser, "word_units", None),
        }

    def _needs(self, layers: list[int], logits: bool) -> Needs:
        """The mapped hidden states, and (attention weights only) the attention maps that produce them:
        ``hidden_states[l]`` is the output of layer ``l - 1``; only those layers' maps are captured."""
        att = tuple(sorted({max(i - 1, 0) for i in layers})) if self.weighting == "attention" else ()
        return Needs(logits=logits, hidden_states=tuple(sorted(set(layers))), attentions=att)

    @property
    def student_needs(self) -> Needs:
        return self._needs([p.student for p in self.pairs], logits=False)

    @property
    def teacher_needs(self) -> Needs:
        # the teacher's logits only for entropy weights (the base objective asks for them if it needs them)
        return self._needs([p.teacher for p in self.pairs], logits=self.weighting == "entropy")

    # -- in the step ---------------------------------------------------------------------------------
    def _token_weights(self, out, layer: int, hidden: Tensor, mask: Tensor, teacher_logits: Tensor | None):
        if self.weighting == "uniform":
            return uniform_weights(mask)
        if self.weighting == "attention":
            return attention_received_weights(out.attentions[max(layer - 1, 0)], mask)
        if (
            self.weighting == "entropy"
            and teacher_logits is not None
            and value(self.cfg.entropy_scope) == "all"
        ):
            return entropy_weights(teacher_logits, mask)
        return self_similarity_weights(hidden, mask, value(self.cfg.ss_query_rows))

    def forward(self, student, teacher, batch, active):
        """``dsa`` and ``hra``, each the mean over the mapped pairs.

        Work shared between pairs is done once per step: the token weights of a (model, layer) and the
        in-unit token mask of a membership. The stages are labelled for ``torch.profiler``
        (``mta.weights``, ``mta.pooling``, ``mta.dsa``, ``mta.projector``, ``mta.hra``).
        """
        terms: dict[str, Tensor] = {}
        want_dsa, want_hra = "dsa" in active, "hra" in active
        if not (want_dsa or want_hra):
            return terms
        s_side, t_side = batch.student, batch.teacher
        s_mask, t_mask = s_side.attention_mask, t_side.attention_mask
        entropy_logits = teacher.logits if self.weighting == "entropy" else None
        inside_masks: dict[int, Tensor] = {}  # id(membership) -> (B, L) tokens inside its units
        counts: dict[int, Tensor] = {}  # id(membership) -> (B, L) how many units hold each token
        per_pair = value(self.cfg.multi_unit) == "per_pair"
        ones_mass = self.weighting == "uniform" and value(self.cfg.uniform_mass) == "ones"
        entropy_masses = self.weighting == "entropy" and value(self.cfg.entropy_scope) == "masses"
        raw_weights: dict[tuple[str, int], Tensor] = {}  # (side, layer) -> token weights
        unit_weights: dict[tuple[str, int, int], Tensor] = {}  # + id(membership) -> renormalized

        def inside(membership) -> Tensor:
            if id(membership) not in inside_masks:
                B = membership.span_mask.shape[0]
                inside_masks[id(membership)] = token_mask_from_membership(membership, B, membership.seq_len)
            return inside_masks[id(membership)]

        def count(membership) -> Tensor:
            """(B, L) float: the units holding each token (the reference's (token, unit) pairs)."""
            if id(membership) not in counts:
                B, L = membership.span_mask.shape[0], membership.seq_len
                c = torch.bincount(membership.token_index, minlength=B * L)
                counts[id(membership)] = c.view(B, L).float()
            return counts[id(membership)]

        def renormalize(w: Tensor, membership) -> Tensor:
            """In-span renormalization (``gather_layer_weights``): per sample over the in-unit tokens,
            each token counted once per unit holding it (``multi_unit=per_pair``) or once."""
            if per_pair:
                total = (w * count(membership)).sum(dim=1, keepdim=True)
                return w * inside(membership) / total.clamp_min(1e-12)
            return normalize_in_spans(w, membership, inside=inside(membership))

        def hra_weights(w: Tensor, membership) -> Tensor:
            return w * count(membership) if per_pair else w

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
            if not self.cfg.in_span_normalization or ones_mass:
                # the cross-tokenizer reference (no in-span renormalization); --no-weight (weights 1)
                return raw_weights[side, layer]
            key = (side, layer, id(membership))
            if key not in unit_weights:
                # same-tokenizer path: weights of tokens inside the units sum to one per sample
                unit_weights[key] = renormalize(raw_weights[side, layer], membership)
            return unit_weights[key]

        entropy_cache: dict[int, Tensor] = {}

        def mass_weights(membership, w_t: Tensor) -> Tensor:
            """The teacher weights of the span masses and of HRA: the centre weights, or (entropy weights,
            the reference) the teacher-confidence weights renormalized the same way."""
            if not entropy_masses:
                return w_t
            if id(membership) not in entropy_cache:
                raw = entropy_weights(teacher.logits, t_mask)
                entropy_cache[id(membership)] = (
                    renormalize(raw, membership) if self.cfg.in_span_normalization else raw
                )
            return entropy_cache[id(membership)]

        dsa, hra = [], []
        for k, pair in enumerate(self.pairs):
            grid = batch.grids[pair.level]
            s_mem, t_mem = grid.student, grid.teacher
            h_s, h_t = student.hidden_states[pair.student], teacher.hidden_states[pair.teacher].float()
            with record_function("mta.weights"):
                w_s = weights("student", pair.student, s_mem)
                w_t = weights("teacher", pair.teacher, t_mem)
            w_m = mass_weights(t_mem, w_t)
            if want_dsa:
                with record_function("mta.pooling"):
                    c_s, _ = pool_spans(h_s, s_mem, w_s)
                    c_t, m_t = pool_spans(h_t, t_mem, w_t)
                    if ones_mass:  # --no-weight: every span weighs 1
                        m_t = grid.span_mask.float()
                    elif entropy_masses:
                        _, m_t = pool_spans(h_t, t_mem, w_m)
                    if self.cfg.project_student:
                        c_s = _project(self.projectors[k], c_s)
                with record_function("mta.dsa"):
                    dsa.append(dsa_loss(c_s, c_t, m_t, grid.span_mask))
                del c_s, c_t, m_t
            if want_hra:
                with record_function("mta.projector"):
                    projected = _project(self.projectors[k], h_s)
                with record_function("mta.hra"):
                    hra.append(hra_loss(projected, h_t, hra_weights(w_m, s_mem), inside(s_mem)))
                del projected  # only the loss's own saved tensors stay alive for the backward
        if dsa:
            terms["dsa"] = torch.stack(dsa).mean()
        if hra:
            terms["hra"] = torch.stack(hra).mean()
        return terms


def _project(projector: nn.Linear, x: Tensor) -> Tensor:
    """``projector(x)`` in the projector's own dtype (float32, or bf16 under ``bf16-true``, where the
    pooled spans are float32 and the hidden states bf16), returned in float32 for the loss."""
    return projector(x.to(projector.weight.dtype)).float()
