"""Token-level divergences between a teacher and a student distribution over one vocabulary.

Every divergence has the same call form::

    loss = fkl(student_logits, teacher_logits, mask, temperature=2.0, reduction="sum")

* ``student_logits`` and ``teacher_logits`` are ``(B, L, V)`` or ``(N, V)`` and must be finite
  (mask vocabulary entries with a large negative number, not ``-inf``).
* ``mask`` is ``(B, L)`` / ``(N,)`` bool, True where a token is counted, or ``None`` (all counted).
  Counted rows are selected *before* any work, so masked tokens cost nothing.
* Both logits are divided by ``temperature`` (DSKD convention: no ``T**2`` factor) and turned into
  log-probabilities in float32, whatever their dtype (bf16 is upcast chunk by chunk).
* ``p`` is the teacher distribution, ``q`` the student one. The teacher side is detached: gradients
  only ever reach ``student_logits``.
* ``reduction``: ``"mean"`` (sum over counted tokens / their number; no counted token gives a zero
  that is still attached to the graph), ``"sum"`` (so the caller can divide by a global token count
  across gradient accumulation and devices) or ``"none"`` (per-token values shaped like ``mask``,
  zero at masked positions).
* ``chunk_size``: process the counted tokens ``chunk_size`` rows at a time, in the forward and in
  the backward pass (each chunk is recomputed there). The result is the same; the largest
  intermediate is ``chunk_size x V`` and nothing ``N x V``-sized is kept between the two passes.
  The gradient then flows into ``student_logits`` only (which is always the case for divergences).

The values are true divergences (entropy terms included), so what gets logged is a real KL/JS/TV.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "REDUCTIONS",
    "akl",
    "cross_entropy",
    "fkl",
    "get_divergence",
    "js",
    "rkl",
    "skl",
    "srkl",
    "tvd",
]

#: The valid values of ``reduction``.
REDUCTIONS = ("mean", "sum", "none")

_LOG2 = math.log(2.0)

# A per-row function: (student log-probs, teacher log-probs), both (n, V) float32 -> (n,).
RowFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# validation and the shared driver
# --------------------------------------------------------------------------------------------
def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not valid; choose one of {list(REDUCTIONS)}")


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int or None")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int or None")


def _check_fraction(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> None:
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ValueError(f"{name}={value!r} must lie in {lo}, {hi}")


def _flat_mask(mask: Tensor | None, lead_shape: torch.Size) -> Tensor | None:
    """Validate ``mask`` against the logits' leading shape and flatten it to ``(N,)`` bool."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits need {tuple(lead_shape)} "
            "(the logits' shape without the vocabulary dimension)"
        )
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask must be bool (True = counted token), got dtype {mask.dtype}")
    return mask.reshape(-1).bool()


def _check_logits(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() not in (2, 3):
        raise ValueError(
            f"logits must be (B, L, V) or (N, V); got student_logits of shape {tuple(student_logits.shape)}"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (one shared vocabulary)"
        )
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")


class _ChunkedRows(torch.autograd.Function):
    """Row-wise ``fn`` over chunks of rows with a hand-written, chunked backward pass.

    Forward runs ``fn`` chunk by chunk without keeping anything but the inputs. Backward recomputes
    each chunk under autograd and writes its gradient straight into one preallocated gradient of
    the first input, so the peak extra memory is one chunk's intermediates plus that gradient (plain
    activation checkpointing would allocate a full-size zero gradient per chunk instead).
    Only the first tensor is differentiable; the others (teacher logits, labels) never get gradients.
    """

    @staticmethod
    def forward(ctx, fn, chunk_size, rows, first, *others):  # noqa: ANN001 - autograd signature
        ctx.fn, ctx.chunk_size = fn, chunk_size
        ctx.save_for_backward(rows, first, *others)
        parts = [fn(*chunk) for _, chunk in _chunks(rows, (first, *others), chunk_size)]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad_values):  # noqa: ANN001 - autograd signature
        rows, first, *others = ctx.saved_tensors
        grad_first = torch.zeros_like(first)
        offset = 0
        for index, (first_chunk, *other_chunks) in _chunks(rows, (first, *others), ctx.chunk_size):
            n = first_chunk.shape[0]
            with torch.enable_grad():
                leaf = first_chunk.detach().requires_grad_(True)
                values = ctx.fn(leaf, *other_chunks)
                (grad_chunk,) = torch.autograd.grad(values, leaf, grad_values[offset : offset + n])
            grad_first.index_copy_(0, index, grad_chunk)
            offset += n
        return (None, None, None, grad_first) + (None,) * len(others)


def _chunks(rows: Tensor, tensors: tuple[Tensor, ...], chunk_size: int):
    """Yield ``(row index, tensors' rows)`` for consecutive chunks of the selected ``rows``."""
    for start in range(0, rows.shape[0], chunk_size):
        index = rows[start : start + chunk_size]
        yield index, tuple(t.index_select(0, index) for t in tensors)


def _in_chunks(
    fn: Callable[..., Tensor],
    tensors: tuple[Tensor, ...],
    flat_mask: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Apply a row-wise ``fn`` to the counted rows of ``tensors`` (all with ``N`` rows).

    ``flat_mask`` (``(N,)`` bool, None = all rows) picks the counted rows. Without ``chunk_size`` this
    is ``fn`` on the selected rows. With it, rows are gathered and processed ``chunk_size`` at a time
    in the forward *and* the backward pass (see :class:`_ChunkedRows`): the largest intermediate is
    ``chunk_size x V`` and nothing of size ``N x V`` is kept between the passes. Gradients flow into
    ``tensors[0]`` only.
    """
    if chunk_size is None:
        return fn(*(t if flat_mask is None else t[flat_mask] for t in tensors))
    first, *others = tensors
    rows = (
        torch.arange(first.shape[0], device=first.device)
        if flat_mask is None
        else flat_mask.nonzero().squeeze(1)
    )
    if torch.is_grad_enabled() and first.requires_grad:
        return _ChunkedRows.apply(fn, chunk_size, rows, first, *others)
    with torch.no_grad():
        return torch.cat([fn(*chunk) for _, chunk in _chunks(rows, tensors, chunk_size)])


def _reduce(values: Tensor, flat_mask: Tensor | None, lead_shape: torch.Size, reduction: str) -> Tensor:
    """Reduce per-counted-token ``values`` (n,) following the module's reduction contract."""
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / max(values.shape[0], 1)
    if flat_mask is None:
        return values.reshape(lead_shape)
    full = values.new_zeros(flat_mask.shape[0]).masked_scatter(flat_mask, values)
    return full.reshape(lead_shape)


def _divergence(
    row_fn: RowFn,
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None,
    temperature: float,
    reduction: str,
    chunk_size: int | None,
) -> Tensor:
    """Validate, select the counted rows, compute ``row_fn`` on log-probabilities, reduce."""
    _check_logits(student_logits, teacher_logits)
    _check_reduction(reduction)
    _check_chunk_size(chunk_size)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")

    lead_shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    flat_mask = _flat_mask(mask, lead_shape)
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab)

    def rows(s: Tensor, t: Tensor) -> Tensor:
        s_logp = F.log_softmax(s.float() / temperature, dim=-1)
        t_logp = F.log_softmax(t.float() / temperature, dim=-1)
        return row_fn(s_logp, t_logp)

    values = _in_chunks(rows, (student, teacher), flat_mask, chunk_size)
    return _reduce(values, flat_mask, lead_shape, reduction)


# --------------------------------------------------------------------------------------------
# row-wise building blocks on log-probabilities
# --------------------------------------------------------------------------------------------
def _kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``KL(a || b) = sum_v a_v (log a_v - log b_v)`` per row, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_x: Tensor, log_y: Tensor, weight: float) -> Tensor:
    """``log(weight * x + (1 - weight) * y)`` computed in log space (exact at weight 0 and 1)."""
    if weight == 0:
        return log_y
    if weight == 1:
        return log_x
    return torch.logaddexp(log_x + math.log(weight), log_y + math.log1p(-weight))


# --------------------------------------------------------------------------------------------
# the divergences
# --------------------------------------------------------------------------------------------
def fkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL, ``KL(teacher || student) = sum_v p log(p / q)``: mode-covering (classic KD).

    See the module docstring for the shapes, ``mask``, ``temperature``, ``reduction`` and
    ``chunk_size`` contract.
    """
    return _divergence(
        lambda s, t: _kl_rows(t, s), student_logits, teacher_logits, mask, temperature, reduction, chunk_size
    )


def rkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL, ``KL(student || teacher) = sum_v q log(q / p)``: mode-seeking (MiniLLM).

    See the module docstring for the shapes and the reduction contract.
    """
    return _divergence(_kl_rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def _js_rows(s_logp: Tensor, t_logp: Tensor) -> Tensor:
    log_m = torch.logaddexp(s_logp, t_logp) - _LOG2
    return 0.5 * _kl_rows(t_logp, log_m) + 0.5 * _kl_rows(s_logp, log_m)


def js(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Jensen-Shannon, ``1/2 KL(teacher || m) + 1/2 KL(student || m)`` with ``m = (p + q) / 2``.

    Symmetric in teacher and student, bounded by ``log 2``. See the module docstring for the contract.
    """
    return _divergence(_js_rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def _tvd_rows(s_logp: Tensor, t_logp: Tensor) -> Tensor:
    return 0.5 * (t_logp.exp() - s_logp.exp()).abs().sum(-1)


def tvd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Total variation distance, ``1/2 sum_v |p - q|`` (DistiLLM): symmetric, bounded by 1.

    Not a KL; it has no direction. See the module docstring for the contract.
    """
    return _divergence(_tvd_rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def skl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    skew_lambda: float = 0.1,
) -> Tensor:
    """Skew forward KL (DistiLLM), ``KL(teacher || skew_lambda p + (1 - skew_lambda) q)``.

    A forward KL (teacher first, mode-covering) against a student distribution mixed with a bit of
    the teacher, which keeps it finite where ``q`` vanishes. ``skew_lambda = 0`` gives :func:`fkl`,
    ``skew_lambda = 1`` gives 0. See the module docstring for the contract.
    """
    _check_fraction("skew_lambda", skew_lambda)

    def rows(s_logp: Tensor, t_logp: Tensor) -> Tensor:
        return _kl_rows(t_logp, _log_mixture(t_logp, s_logp, skew_lambda))

    return _divergence(rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def srkl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    skew_lambda: float = 0.1,
) -> Tensor:
    """Skew reverse KL (DistiLLM), ``KL(student || (1 - skew_lambda) p + skew_lambda q)``.

    A reverse KL (student first, mode-seeking) against a teacher distribution mixed with a bit of the
    student. ``skew_lambda = 0`` gives :func:`rkl`, ``skew_lambda = 1`` gives 0. See the module
    docstring for the contract.
    """
    _check_fraction("skew_lambda", skew_lambda)

    def rows(s_logp: Tensor, t_logp: Tensor) -> Tensor:
        return _kl_rows(s_logp, _log_mixture(s_logp, t_logp, skew_lambda))

    return _divergence(rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


def akl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    mu: float = 0.5,
) -> Tensor:
    """Adaptive KL (Wu et al. 2024): a per-token mix of forward and reverse KL.

    Sort the teacher probabilities in ascending order; the *tail* is the prefix whose cumulative
    teacher probability is ``<= mu`` and the *head* is the rest. With the detached gaps
    ``g_head = sum_head |p - q|`` and ``g_tail = sum_tail |p - q|``::

        AKL = g_head / (g_head + g_tail) * KL(teacher || student)    # forward, mode-covering
            + g_tail / (g_head + g_tail) * KL(student || teacher)    # reverse, mode-seeking

    (equal weights when both gaps are 0, where both KLs are 0 anyway). See the module docstring for
    the contract.
    """
    _check_fraction("mu", mu)

    def rows(s_logp: Tensor, t_logp: Tensor) -> Tensor:
        with torch.no_grad():
            p_sorted, order = t_logp.exp().sort(dim=-1)
            gap = (p_sorted - s_logp.exp().gather(-1, order)).abs()
            tail = p_sorted.cumsum(dim=-1) <= mu
            g_tail = torch.where(tail, gap, 0.0).sum(-1)
            g_total = gap.sum(-1)
            head_weight = torch.where(
                g_total > 0, (g_total - g_tail) / g_total.clamp_min(torch.finfo(g_total.dtype).tiny), 0.5
            )
        return head_weight * _kl_rows(t_logp, s_logp) + (1 - head_weight) * _kl_rows(s_logp, t_logp)

    return _divergence(rows, student_logits, teacher_logits, mask, temperature, reduction, chunk_size)


#: Name -> divergence; every entry has the call form described in the module docstring.
DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "fkl": fkl,
    "rkl": rkl,
    "js": js,
    "tvd": tvd,
    "skl": skl,
    "srkl": srkl,
    "akl": akl,
}


def get_divergence(name: str) -> Callable[..., Tensor]:
    """Return the divergence registered as ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return DIVERGENCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown divergence {name!r}; valid names: {sorted(DIVERGENCES)}") from None


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Next-token cross-entropy ``-log softmax(logits)[label]`` with ``-100`` labels ignored.

    ``logits`` are ``(B, L, V)`` / ``(N, V)`` and ``labels`` ``(B, L)`` / ``(N,)``, already aligned
    (no shift happens here). Computed in float32 on the counted rows only; same ``reduction`` and
    ``chunk_size`` contract as the divergences (``"none"`` gives 0 at ignored positions).
    """
    _check_reduction(reduction)
    _check_chunk_size(chunk_size)
    if logits.dim() not in (2, 3) or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (B, L, V) or (N, V) and labels {tuple(labels.shape)} "
            "must be the logits' shape without the vocabulary dimension"
        )
    if labels.dtype not in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    lead_shape = logits.shape[:-1]
    flat_mask = labels.reshape(-1).ne(-100)
    rows = logits.reshape(-1, logits.shape[-1])
    targets = labels.reshape(-1).long()

    def per_row(x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(x.float(), y, reduction="none")

    values = _in_chunks(per_row, (rows, targets), flat_mask, chunk_size)
    return _reduce(values, flat_mask, lead_shape, reduction)
