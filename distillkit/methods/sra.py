"""SRA: Span Representation Alignment (arXiv 2605.01205), as its authors' release computes it.

Reproduces ``wind123mountain/SRE@d32ad955:llm_train.py::knowledge_distillation_loss`` term by term
(ctkd.md §2), an auxiliary objective that stands on no base by default:

    L = (1 - kd_rate)·CE + kd_rate·(w_com·L_com + w_geo·L_geo + w_logit·L_slog [+ w_dyn·L_dyn] [+ base])

with ``kd_rate = 1 - α`` (the release's ``hard_label_loss_weight`` α = 0.5). Over the aligned spans of
the response (``batch.grids["aligned"]``, the co-segmentation of the two tokenizations built once in
data preparation) and the mapped layer pairs ``(l^T_k, l^S_k)``:

* each side pools its own ``hidden_states[l]`` into span centres of mass, weighted by its own attention:
  the query row of the last real token (``query=last_real``; the release's last *padded* position is
  ``query=last_position``) of attention layer ``l - 1``, summed over heads, normalized, detached;
* salience ``ŵ`` = the teacher span masses of that layer, normalized per sample;
* ``L_com = Σ_k ω_k (1/B) Σ_b Σ_u ŵ (1 − cos(P_k c^S, c^T))``, ``P_k`` bias-free (xavier init);
* ``L_geo``: the cosine-Gram MSE of the last pair on the *unprojected* student centres, per-sample pair
  weights ``ŵ_u ŵ_v``; weight 50;
* ``L_slog``: the student's own head on its last-pair centres vs the frozen teacher head on the
  teacher's, both restricted to the shared vocabulary, ``KL(teacher ‖ student)`` at T = 2, summed over
  spans and divided by B (no T², not mass-weighted);
* ``L_dyn`` (the development versions' layer-velocity term) only when ``w_dyn > 0``.

Where distillkit departs from the release, by default or as an option, is listed in the README's SRA
section: the co-segmentation keeps the byte pieces of one character together (``spans_source=cosegment``;
the release's end-offset walk is ``reference_lcs``), and the query is the last real token (SRAv4's fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Any, Optional

import torch
from torch import Tensor, nn

from distillkit.config import Divergence, value
from distillkit.losses import com_loss, dynamics_loss, geometric_loss, salience, span_logit_loss
from distillkit.methods.base import MethodSetupError, Objective, ObjectiveConfig
from distillkit.models.layer_map import LayerPair, resolve_layer_map
from distillkit.spans.pooling import last_query_attention_weights, pool_spans
from distillkit.types import Needs

GRID = "aligned"


class SpanSource(str, Enum):
    cosegment = (
        "cosegment"  # minimal common character boundaries (distillkit; keeps a character's bytes together)
    )
    reference_lcs = "reference_lcs"  # the release's end-offset two-pointer walk (SRE data_utils.py)


class OneSided(str, Enum):
    merge = "merge"
    drop = "drop"


class Query(str, Enum):
    last_real = "last_real"  # the last real token's attention row (SRAv4; default)
    last_position = "last_position"  # the release's row at index L-1 (a padding row on padded samples)


class Pooling(str, Enum):
    weighted = "weighted"  # attention-weighted centre of mass (release)
    mean = "mean"  # span_weight_pooling=False ablation


class SpanMass(str, Enum):
    attention = "attention"  # teacher attention mass per span (release)
    uniform = "uniform"  # span_loss_weight=False ablation: every span weighs the same


class SRAProjectorInit(str, Enum):
    xavier = "xavier"  # the scripts (--orthogonal False)
    orthogonal = "orthogonal"
    identity = "identity"  # tests: P = I on equal widths
    default = "default"


class ComDistance(str, Enum):
    cosine = "cosine"
    mse = "mse"


class GeoNormalization(str, Enum):
    per_sample = "per_sample"  # release: pair weights sum to 1 per sample, then mean over B
    batch = "batch"  # MTA's dsa_loss normalization


class GeoStudent(str, Enum):
    raw = "raw"  # unprojected student centres (release)
    projected = "projected"


class LogitVocab(str, Enum):
    exact = "exact"  # release get_token_mapping: identical strings
    space = "space"  # Ġ = ▁ (DSKDv2)
    bytes = "bytes"


class LogitReduction(str, Enum):
    per_sample_sum = "per_sample_sum"  # Σ over spans / B (release)
    mean_over_spans = "mean_over_spans"


@dataclass
class SRAConfig(ObjectiveConfig):
    # -- units (data preparation) --
    spans_source: SpanSource = SpanSource.cosegment
    one_sided: OneSided = OneSided.merge
    max_spans: int = 1024  # the release's N_SPAN
    # -- weights --
    query: Query = Query.last_real
    salience_power: float = 1.0  # p
    pooling: Pooling = Pooling.weighted
    span_mass: SpanMass = SpanMass.attention
    pair_weights: Optional[list[float]] = None  # hidden_loss_weights (normalized); None = uniform
    # -- projector --
    projector_init: SRAProjectorInit = SRAProjectorInit.xavier
    projector_bias: bool = False
    # -- terms --
    w_com: float = 1.0
    com_distance: ComDistance = ComDistance.cosine
    w_geo: float = 50.0  # geom_loss_weight (release 50; dev scripts 10)
    geo_normalization: GeoNormalization = GeoNormalization.per_sample
    geo_student: GeoStudent = GeoStudent.raw
    w_logit: float = 1.0
    temperature: float = 2.0
    logit_vocab: LogitVocab = LogitVocab.exact
    min_overlap: float = 0.05  # fail in setup when |overlap| / smaller vocabulary is below this
    logit_divergence: Divergence = Divergence.fkl
    logit_reduction: LogitReduction = LogitReduction.per_sample_sum
    w_dyn: float = 0.0  # layer-velocity term (SRAv3 1, variant 0.1; absent from the release)
    # -- wiring (conf/method/sra.yaml interpolates them from the run config) --
    layer_map: Any = None
    reference_layers: Any = None  # {pair, teacher, student}: the pair's SRA map (model.sra_*_layers)
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise MethodSetupError(f"method.temperature must be > 0, got {self.temperature}")
        if self.max_spans < 1:
            raise MethodSetupError(f"method.max_spans must be >= 1, got {self.max_spans}")


class SRA(Objective):
    name = "sra"
    kind = "aux"
    Config = SRAConfig

    def __init__(self, **knobs: Any):
        super().__init__(**knobs)
        self.pairs: list[LayerPair] = []
        self.projectors = nn.ModuleList()
        self.register_buffer("student_vocab_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("teacher_vocab_ids", torch.zeros(0, dtype=torch.long), persistent=False)

    # -- before training ---------------------------------------------------------------------------
    def resolve_pairs(self, n_teacher: int, n_student: int) -> list[LayerPair]:
        ref = self.cfg.reference_layers or {}
        lm = SimpleNamespace(**dict(self.cfg.layer_map or {"kind": "last", "word_pairs": 0}))
        if value(lm.kind) == "reference" and not list(ref.get("teacher") or []):
            lm = SimpleNamespace(kind="last", teacher=[], student=[], num_pairs=None, word_pairs=0)
        pair = SimpleNamespace(
            name=ref.get("pair", "custom"),
            teacher_layers=list(ref.get("teacher") or []),
            student_layers=list(ref.get("student") or []),
        )
        pairs = resolve_layer_map(lm, pair, n_teacher, n_student, "phrase")
        bad = [p for p in pairs if p.teacher < 1 or p.student < 1]
        if bad:
            raise MethodSetupError(
                f"SRA weighs each hidden_states[l] by the attention of layer l-1, so index 0 (the embeddings) "
                f"cannot be mapped; got {[(p.teacher, p.student) for p in bad]} (layer_map)"
            )
        return pairs

    def check_tokenizers(self, teacher_tokenizer, student_tokenizer) -> None:
        if self.cfg.w_logit != 0:
            self._vocab_ids(teacher_tokenizer, student_tokenizer)  # fails early on a too-small overlap

    def _vocab_ids(self, teacher_tokenizer, student_tokenizer) -> tuple[Tensor, Tensor]:
        from distillkit.vocab import require_overlap, vocab_map

        vmap = vocab_map(
            teacher_tokenizer, student_tokenizer, value(self.cfg.logit_vocab), cache_root=self.cfg.cache_dir
        )
        require_overlap(vmap, self.cfg.min_overlap, "method.min_overlap")
        return vmap.overlap()

    def setup(self, teacher, student) -> None:
        self.pairs = self.resolve_pairs(teacher.num_layers, student.num_layers)
        d_s, d_t = student.hidden_size, teacher.hidden_size
        bias = bool(self.cfg.projector_bias)
        self.projectors = nn.ModuleList(nn.Linear(d_s, d_t, bias=bias) for _ in self.pairs)
        init = value(self.cfg.projector_init)
        for proj in self.projectors:
            if init == "xavier":
                nn.init.xavier_uniform_(proj.weight)
            elif init == "orthogonal":
                nn.init.orthogonal_(proj.weight)
            elif init == "identity":
                if d_s != d_t:
                    raise MethodSetupError(
                        f"method.projector_init=identity needs equal widths, got {d_s} -> {d_t}"
                    )
                nn.init.eye_(proj.weight)
            if bias and init != "default":
                nn.init.zeros_(proj.bias)
        if self.cfg.w_logit != 0:
            s_ids, t_ids = self._vocab_ids(teacher.tokenizer, student.tokenizer)
            self.student_vocab_ids, self.teacher_vocab_ids = s_ids, t_ids
        weights = self.cfg.pair_weights
        if weights is not None and len(weights) != len(self.pairs):
            raise MethodSetupError(
                f"method.pair_weights has {len(weights)} entries for {len(self.pairs)} mapped pairs"
            )
        if self.cfg.w_dyn != 0 and len(self.pairs) < 2:
            raise MethodSetupError("method.w_dyn > 0 needs at least two mapped layer pairs (layer_map)")

    def annotators(self, teacher, student) -> list:
        from distillkit.data.sra_annotate import sra_grid_annotator

        return [
            sra_grid_annotator(
                value(self.cfg.spans_source), self.cfg.max_spans, value(self.cfg.one_sided), name=GRID
            )
        ]

    def structural_weights(self) -> dict[str, float]:
        c = self.cfg
        weights = {"com": c.w_com, "geometric": c.w_geo, "span_logit": c.w_logit}
        if c.w_dyn:
            weights["dynamics"] = c.w_dyn
        return weights

    def tags(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "sra.version": "SRE@d32ad955",
            "spans_source": value(c.spans_source),
            "query": value(c.query),
            "pooling": value(c.pooling),
            "span_mass": value(c.span_mass),
            "logit_vocab": value(c.logit_vocab),
            "geo_normalization": value(c.geo_normalization),
            "w_geo": c.w_geo,
            "temperature": c.temperature,
            "layer_map": [(p.teacher, p.student) for p in self.pairs],
        }

    def _needs(self, layers: list[int], head: bool) -> Needs:
        rows = tuple(sorted({i - 1 for i in layers}))
        return Needs(
            logits=False,
            hidden_states=tuple(sorted(set(layers))),
            attention_rows=rows if self._uses_attention else (),
            attention_query=value(self.cfg.query),
            head=head,
        )

    @property
    def _uses_attention(self) -> bool:
        return value(self.cfg.pooling) == "weighted" or value(self.cfg.span_mass) == "attention"

    @property
    def student_needs(self) -> Needs:
        return self._needs([p.student for p in self.pairs], head=self.cfg.w_logit != 0)

    @property
    def teacher_needs(self) -> Needs:
        return self._needs([p.teacher for p in self.pairs], head=self.cfg.w_logit != 0)

    def param_groups(self, base_lr: float, projector_lr: float | None) -> list[dict[str, Any]]:
        groups = super().param_groups(base_lr, projector_lr)
        for g in groups:
            g["weight_decay"] = 0.0  # the release's projector group: lr 5e-4, no weight decay
        return groups

    # -- in the step ---------------------------------------------------------------------------------
    def _side(self, out, side, layer: int, membership) -> tuple[Tensor, Tensor]:
        """(centres, masses) of one model's layer over its side of the grid, pooled by its own attention."""
        h = out.hidden_states[layer]
        a = (
            last_query_attention_weights(out.attention_rows.get(layer - 1), side.attention_mask)
            if self._uses_attention
            else None
        )
        pool_w = a if value(self.cfg.pooling) == "weighted" else None
        centres, mass = pool_spans(h, membership, pool_w)
        if a is not None and pool_w is None:  # mean pooling, attention masses
            _, mass = pool_spans(h.detach(), membership, a)
        return centres, mass

    def forward(self, student, teacher, batch, active):
        c = self.cfg
        grid = batch.grids[GRID]
        mask = grid.span_mask
        want = {t for t in ("com", "geometric", "span_logit", "dynamics") if t in active}
        if not want:
            return {}
        raw = [float(w) for w in (c.pair_weights or [1.0] * len(self.pairs))]
        omega = [w / sum(raw) for w in raw]  # plain floats: no tensor round trip in the step
        uniform_mass = value(c.span_mass) == "uniform"
        com, proj_s, cents_t, masses_t, w_last = [], [], [], [], None
        c_s = c_t = None
        for k, pair in enumerate(self.pairs):
            c_s, _ = self._side(student, batch.student, pair.student, grid.student)
            with torch.no_grad():
                c_t, m_t = self._side(teacher, batch.teacher, pair.teacher, grid.teacher)
            if uniform_mass:
                m_t = mask.float()
            w_hat = salience(m_t, mask, c.salience_power)
            p_s = self.projectors[k](c_s)
            if "com" in want:
                com.append(omega[k] * com_loss(p_s, c_t, w_hat, mask, value(c.com_distance)))
            proj_s.append(p_s)
            cents_t.append(c_t)
            masses_t.append(m_t)
            w_last = w_hat
        terms: dict[str, Tensor] = {}
        if com:
            terms["com"] = torch.stack(com).sum()
        if "geometric" in want:
            geo_s = c_s if value(c.geo_student) == "raw" else proj_s[-1]
            terms["geometric"] = geometric_loss(geo_s, c_t, w_last, mask, value(c.geo_normalization))
        if "span_logit" in want:
            z_s = student.head(c_s.to(student.head.weight.dtype))[..., self.student_vocab_ids]
            with torch.no_grad():
                z_t = teacher.head(c_t.to(teacher.head.weight.dtype))[..., self.teacher_vocab_ids]
            terms["span_logit"] = span_logit_loss(
                z_s, z_t, mask, c.temperature, value(c.logit_divergence), value(c.logit_reduction)
            )
        if "dynamics" in want:
            terms["dynamics"] = dynamics_loss(proj_s, cents_t, masses_t, mask)
        return terms
