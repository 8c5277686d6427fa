"""SRA's span-level losses (Span Representation Alignment), as the authors' release computes them.

Pure, batched functions (no Python loop over spans or samples) that follow
``wind123mountain/SRE@d32ad955`` term by term (ctkd.md §2.4):

* :func:`salience`: the per-sample normalized teacher span mass ``ŵ`` (``llm_train.py``,
  ``span_weights ** p / span_weights.sum(-1)``);
* :func:`com_loss`: the centre-of-mass alignment ``Σ_u ŵ_u (1 − cos(P c^S_u, c^T_u))``
  (``loss.py::cosine_token_weight_loss``), one mapped layer pair;
* :func:`geometric_loss`: the cosine-Gram MSE with per-sample pair weights (``llm_train.py``,
  ``score_loss``);
* :func:`span_logit_loss`: ``KL(softmax(z^T/T) ‖ softmax(z^S/T))`` per span
  (``llm_train.py::soft_label_distill_loss``);
* :func:`dynamics_loss`: the layer-velocity term of the development versions
  (``SRAv3/loss.py::derivative_loss``; absent from the release).

Shapes: ``B`` samples, ``S`` span slots per sample (padded; ``span_mask (B, S)`` bool marks the real
spans, i.e. ``student.span_mask & teacher.span_mask`` of the aligned grid), ``D*`` feature widths.
The span centres ``c`` and teacher masses ``m`` come from :func:`distillkit.spans.pooling.pool_spans`.

Conventions (the same as :mod:`distillkit.losses.span`):

* the teacher side (teacher centres, masses, ``ŵ``, teacher logits) is detached inside each
  function, so gradients only reach the student inputs;
* computation is in float32 (bf16/fp16 inputs are upcast; float64 stays float32 too);
* padded span slots are zeroed before any arithmetic, so whatever the pooling left there (even NaN)
  never reaches the value or the gradients, and samples without spans contribute exactly 0;
* "mean over the batch" divides by ``B``, the number of samples *including* those without spans,
  as the reference's ``.mean()`` / ``/ B`` do; a batch with nothing to compare gives a 0 that is
  still attached to the student graph (the reference gives NaN there: ``0 / 0`` in its salience).

``eps = 1e-5`` is the reference's everywhere (``F.cosine_similarity(..., eps=1e-5)``,
``F.normalize(..., eps=1e-5)``, ``clamp(min=1e-5)``). torch's cosine clamps each norm separately:
``cos(x, y) = x·y / (max(‖x‖, eps) · max(‖y‖, eps))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from distillkit.losses.divergences import get_divergence
from distillkit.losses.span import _check_grid, _cosine_gram, _safe_ratio, _zero_padding

__all__ = [
    "COM_DISTANCES",
    "GEO_NORMALIZATIONS",
    "REFERENCE_EPS",
    "SPAN_LOGIT_REDUCTIONS",
    "com_loss",
    "dynamics_loss",
    "geometric_loss",
    "salience",
    "span_logit_loss",
]

#: ``eps`` of every norm, cosine and clamp in the reference code.
REFERENCE_EPS = 1e-5
#: The reference floors the salience power at this value (``self.args.p = max(args.p, 1e-5)``).
_MIN_POWER = 1e-5

#: Valid values of ``com_loss(distance=...)``.
COM_DISTANCES = ("cosine", "mse")
#: Valid values of ``geometric_loss(normalization=...)``.
GEO_NORMALIZATIONS = ("per_sample", "batch")
#: Valid values of ``span_logit_loss(reduction=...)``.
SPAN_LOGIT_REDUCTIONS = ("per_sample_sum", "mean_over_spans")


def _choice(name: str, value: object, valid: tuple[str, ...]) -> str:
    """The plain string of a closed choice (an Enum member's ``.value`` is accepted), or a clear error."""
    plain = getattr(value, "value", value)
    if plain not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")
    return plain


def _check_mask(name: str, tensor: Tensor, span_mask: Tensor) -> None:
    if span_mask.dim() != 2 or span_mask.dtype != torch.bool:
        raise ValueError(
            f"{name}: span_mask must be a (B, S) bool tensor, got {tuple(span_mask.shape)} {span_mask.dtype}"
        )
    if tuple(tensor.shape) != tuple(span_mask.shape):
        raise ValueError(f"{name}: got {tuple(tensor.shape)}, span_mask is {tuple(span_mask.shape)}")


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps={eps!r} must be a finite number > 0")


def _batch_size(t: Tensor) -> int:
    return max(int(t.shape[0]), 1)


# --------------------------------------------------------------------------------------------
# salience
# --------------------------------------------------------------------------------------------
def salience(mass_t: Tensor, span_mask: Tensor, power: float = 1.0) -> Tensor:
    """SRA's span salience: the teacher span mass, powered and normalized per sample.

    ``mass_t (B, S)`` non-negative teacher span masses ``m^T_u = Σ_{j∈u} a^T(j)`` (one layer),
    ``span_mask (B, S)`` bool::

        ŵ_u = (m^T_u)^p / Σ_{v valid} (m^T_v)^p          per sample, over its valid span slots

    Follows ``SRE@d32ad955:llm_train.py::knowledge_distillation_loss``
    (``span_weights = span_weights ** self.args.p; span_weights / span_weights.sum(-1, keepdim=True)``),
    including its floor ``p = max(power, 1e-5)``: ``power=0`` therefore gives ``≈1/n`` to every span
    with positive mass and 0 to a zero-mass span (the ``span_loss_weight=False`` ablation computes
    ``m ** 1e-5`` the same way). Departure: a sample without valid spans (or with zero total mass)
    gets all zeros, where the reference divides 0 by 0. Detached, float32; padded slots are 0.
    """
    _check_mask("salience: mass_t", mass_t, span_mask)
    if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
        raise ValueError(f"power={power!r} must be a finite number >= 0")
    m = torch.where(span_mask, mass_t.detach().float(), 0.0)
    powered = torch.where(span_mask, m.pow(max(float(power), _MIN_POWER)), 0.0)
    return _safe_ratio(powered, powered.sum(dim=1, keepdim=True))


# --------------------------------------------------------------------------------------------
# centre-of-mass alignment
# --------------------------------------------------------------------------------------------
def com_loss(
    c_s_projected: Tensor,
    c_t: Tensor,
    w_hat: Tensor,
    span_mask: Tensor,
    distance: str = "cosine",
    *,
    eps: float = REFERENCE_EPS,
) -> Tensor:
    """SRA's CoM alignment for one mapped layer pair: salience-weighted distance, summed over spans.

    ``c_s_projected (B, S, Dt)`` the student CoMs after that pair's projector ``P_k``,
    ``c_t (B, S, Dt)`` the teacher CoMs, ``w_hat (B, S)`` the salience (:func:`salience`),
    ``span_mask (B, S)`` bool::

        distance="cosine":  L = (1/B) Σ_b Σ_u ŵ_u (1 − cos(P c^S_u, c^T_u))
        distance="mse":     L = (1/B) Σ_b Σ_u ŵ_u mean_d (P c^S_u − c^T_u)_d²

    ``cosine`` is ``SRE@d32ad955:loss.py::cosine_token_weight_loss`` (``eps=1e-5``, ``.sum(-1).mean()``),
    ``mse`` its ``mse_token_weight_loss``. The multi-layer term is ``Σ_k ω_k com_loss(pair k)`` with
    ``ω_k`` the normalized ``hidden_loss_weights`` (the caller's sum). The cosine form is invariant to
    ``P_k ← αP_k`` for ``α > 0``. Teacher side and ``ŵ`` detached.
    """
    plain = _choice("distance", distance, COM_DISTANCES)
    _check_eps(eps)
    _check_grid("com_loss", c_s_projected, c_t, span_mask, w_hat, same_width=True)
    student = _zero_padding(c_s_projected, span_mask)
    teacher = _zero_padding(c_t.detach(), span_mask)
    if plain == "cosine":
        per_span = 1.0 - F.cosine_similarity(student, teacher, dim=-1, eps=eps)
    else:
        per_span = (student - teacher).square().mean(dim=-1)
    w = torch.where(span_mask, w_hat.detach().float(), 0.0)
    return torch.where(span_mask, w * per_span, 0.0).sum() / _batch_size(c_s_projected)


# --------------------------------------------------------------------------------------------
# geometric regulariser
# --------------------------------------------------------------------------------------------
def geometric_loss(
    c_s_raw: Tensor,
    c_t: Tensor,
    w_hat: Tensor,
    span_mask: Tensor,
    normalization: str = "per_sample",
    *,
    eps: float = REFERENCE_EPS,
    pair_eps: float = REFERENCE_EPS,
) -> Tensor:
    """SRA's geometric regulariser: a pair-weighted MSE between the cosine Gram matrices of both sides.

    ``c_s_raw (B, S, Ds)`` the *unprojected* student CoMs of the last mapped pair (the reference's
    ``outputs.embeddings``; the widths may differ, Gram matrices are width-free), ``c_t (B, S, Dt)``,
    ``w_hat (B, S)`` the last pair's salience, ``span_mask (B, S)`` bool. With
    ``G_uv = ĉ_u · ĉ_v``, ``ĉ = c / max(‖c‖, eps)`` (``F.normalize(eps=1e-5)``) on each side::

        normalization="per_sample" (reference):
            π_uv = ŵ_u ŵ_v [u≠v] / max(Σ_{u'≠v'} ŵ_u' ŵ_v', pair_eps)          per sample
            L = (1/B) Σ_b Σ_{u,v} π_uv (G^S_uv − G^T_uv)²
        normalization="batch" (MTA's DSA, = distillkit.losses.dsa_loss with the same eps):
            L = Σ_b Σ_{u≠v} ŵ_u ŵ_v (G^S_uv − G^T_uv)² / Σ_b Σ_{u≠v} ŵ_u ŵ_v

    ``per_sample`` follows ``SRE@d32ad955:llm_train.py`` (``pair_weights[:, eye] = 0``,
    ``pair_weights / pair_weights.sum(dim=(1, 2)).clamp(min=1e-5)``,
    ``(F.mse_loss(..., reduction='none') * pair_weights).sum() / B``), the clamp included. Invariant to
    a positive rescaling of any CoM and to an orthogonal rotation of either side's space. A sample
    with fewer than two valid spans contributes 0. Teacher side and ``ŵ`` detached.
    """
    plain = _choice("normalization", normalization, GEO_NORMALIZATIONS)
    _check_eps(eps)
    _check_eps(pair_eps)
    _check_grid("geometric_loss", c_s_raw, c_t, span_mask, w_hat, same_width=False)
    gram_s = _cosine_gram(_zero_padding(c_s_raw, span_mask), eps)
    gram_t = _cosine_gram(_zero_padding(c_t.detach(), span_mask), eps)
    w = torch.where(span_mask, w_hat.detach().float(), 0.0)
    num_spans = span_mask.shape[1]
    off_diagonal = ~torch.eye(num_spans, dtype=torch.bool, device=span_mask.device)
    pair = (w.unsqueeze(2) * w.unsqueeze(1)) * off_diagonal  # 0 unless u != v, both valid
    squared = (gram_s - gram_t).square()
    if plain == "per_sample":
        pi = pair / pair.sum(dim=(1, 2), keepdim=True).clamp_min(pair_eps)
        return (pi * squared).sum() / _batch_size(c_s_raw)
    return _safe_ratio((pair * squared).sum(), pair.sum())


# --------------------------------------------------------------------------------------------
# aligned span logits
# --------------------------------------------------------------------------------------------
def span_logit_loss(
    z_s: Tensor,
    z_t: Tensor,
    span_mask: Tensor,
    temperature: float = 2.0,
    divergence: str = "fkl",
    reduction: str = "per_sample_sum",
    *,
    chunk_size: int | None = None,
    **divergence_kwargs: float,
) -> Tensor:
    """SRA's aligned span-logit distillation on logits already restricted to the shared vocabulary.

    ``z_s (B, S, V')`` = ``student_head(c^S_u)[..., s_ids]`` (the student's own head on its
    unprojected CoM, in the reference), ``z_t (B, S, V')`` = ``teacher_head(c^T_u)[..., t_ids]``;
    column ``i`` of both is the same shared token (``distillkit.vocab``). ``span_mask (B, S)`` bool.
    With ``p = softmax(z^T/T)`` (teacher) and ``q = softmax(z^S/T)`` (student)::

        divergence="fkl" (reference):  d_u = KL(p ‖ q) = Σ_i p_i log(p_i / q_i)       (no T² factor)
        reduction="per_sample_sum" (reference):  L = (1/B) Σ_b Σ_{u valid} d_u
        reduction="mean_over_spans":             L = Σ_{b,u valid} d_u / #valid spans

    Follows ``SRE@d32ad955:llm_train.py::soft_label_distill_loss``
    (``F.kl_div(log_softmax(z_s/T), softmax(z_t/T)).sum(-1)``, ``(loss * mask).sum() / z_s.size(0)``).
    The reference's mask ``z_s.abs().sum(-1) != 0`` (padded slots have a zero CoM, so zero logits with
    a bias-free head) is replaced by ``span_mask``. Any distillkit divergence is accepted
    (``divergence="skl"`` with ``skew_lambda=...`` for the variant's skewed FKL); extra keyword
    arguments go to it. Invariant to adding a constant to all logits of a span (softmax). The teacher
    logits are detached; computed in float32 over the valid spans only (``chunk_size`` as in
    :mod:`distillkit.losses.divergences`).
    """
    plain = _choice("reduction", reduction, SPAN_LOGIT_REDUCTIONS)
    fn = get_divergence(getattr(divergence, "value", divergence))
    if z_s.dim() != 3 or tuple(z_s.shape) != tuple(z_t.shape):
        raise ValueError(
            f"span_logit_loss: z_s {tuple(z_s.shape)} and z_t {tuple(z_t.shape)} must both be (B, S, V') "
            "over the same shared vocabulary"
        )
    _check_mask("span_logit_loss: z_s[..., 0]", z_s[..., 0], span_mask)
    if plain == "per_sample_sum":
        total = fn(
            z_s,
            z_t,
            span_mask,
            temperature=temperature,
            reduction="sum",
            chunk_size=chunk_size,
            **divergence_kwargs,
        )
        return total / _batch_size(z_s)
    return fn(
        z_s,
        z_t,
        span_mask,
        temperature=temperature,
        reduction="mean",
        chunk_size=chunk_size,
        **divergence_kwargs,
    )


# --------------------------------------------------------------------------------------------
# layer-velocity ("derivative") loss of the development versions
# --------------------------------------------------------------------------------------------
def _stack(name: str, layers: Sequence[Tensor] | Tensor) -> Tensor:
    if isinstance(layers, Tensor):
        return layers
    if len(layers) == 0:
        raise ValueError(f"dynamics_loss: {name} is empty")
    return torch.stack(list(layers))


def dynamics_loss(
    c_s_projected: Sequence[Tensor] | Tensor,
    c_t: Sequence[Tensor] | Tensor,
    mass_t: Sequence[Tensor] | Tensor,
    span_mask: Tensor,
    *,
    eps: float = REFERENCE_EPS,
) -> Tensor:
    """The layer-velocity loss of SRAv3/SRAv5 and the variant (``w_dyn``; absent from the release).

    ``c_s_projected``: the ``K`` mapped pairs' student CoMs, each after its own projector ``P_k``
    (``K`` tensors ``(B, S, Dt)`` or one ``(K, B, S, Dt)``), ``c_t`` the teacher CoMs likewise,
    ``mass_t`` the **raw** teacher span masses ``m^T_{u,k}`` (``K × (B, S)``, not the salience),
    ``span_mask (B, S)`` bool. With ``Δ_k c = c_{k+1} − c_k``::

        L = 1/(K−1) Σ_{k<K} (1/B) Σ_b Σ_u m^T_{u,k+1} (1 − cos(Δ_k c^S_u, Δ_k c^T_u))

    Follows ``sonho4ng/SRAv3:loss.py::derivative_loss`` (``eps=1e-5``, ``.sum(-1).mean()`` per step)
    and its caller's ``/ (n_layer - 1)``. Needs ``K >= 2`` (the reference divides by zero with one
    pair). Teacher side and masses detached.
    """
    _check_eps(eps)
    s = _stack("c_s_projected", c_s_projected)
    t = _stack("c_t", c_t)
    m = _stack("mass_t", mass_t)
    if s.dim() != 4 or s.shape != t.shape or tuple(m.shape) != tuple(s.shape[:3]):
        raise ValueError(
            "dynamics_loss: need K x (B, S, Dt) student and teacher CoMs and K x (B, S) masses; got "
            f"{tuple(s.shape)}, {tuple(t.shape)}, {tuple(m.shape)}"
        )
    if s.shape[0] < 2:
        raise ValueError(f"dynamics_loss needs at least 2 mapped layer pairs, got K={s.shape[0]}")
    _check_mask("dynamics_loss: mass_t[0]", m[0], span_mask)
    keep = span_mask.unsqueeze(0).unsqueeze(-1)  # (1, B, S, 1)
    s = s.float().masked_fill(~keep, 0.0)
    t = t.detach().float().masked_fill(~keep, 0.0)
    velocity_s, velocity_t = s[1:] - s[:-1], t[1:] - t[:-1]
    per_span = 1.0 - F.cosine_similarity(velocity_s, velocity_t, dim=-1, eps=eps)  # (K-1, B, S)
    weight = torch.where(span_mask, m[1:].detach().float(), 0.0)
    total = torch.where(span_mask, weight * per_span, 0.0).sum()
    return total / (_batch_size(span_mask) * (s.shape[0] - 1))
