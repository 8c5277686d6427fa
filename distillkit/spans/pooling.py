"""Span pooling and token weights: the part of the span layer that runs INSIDE the training step.

Everything here is a handful of batched tensor ops — no Python loop over spans or samples, no
host sync — so it costs a few percent of a step (DESIGN.md principle 4).

* :func:`pool_spans`: weighted centre of mass of each span, one ``index_add_`` over the flat
  (token, span) pairs of a :class:`~distillkit.types.SpanMembership`.
* Token weights (all detached, padding = 0): :func:`self_similarity_weights` (MTA's parameter-free
  self-similarity "attention", papers.md §2.2), :func:`attention_received_weights` (a model's own
  attention), :func:`entropy_weights` (teacher confidence), :func:`uniform_weights`.
* :func:`normalize_in_spans`: the reference's ``gather_layer_weights`` (weights of in-span tokens
  renormalized to sum to one per sample).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from distillkit.types import SpanMembership


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (bf16/fp16 sums lose too much)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_membership(membership: SpanMembership, B: int, L: int) -> int:
    if membership.seq_len != L:
        raise ValueError(f"membership was built for seq_len={membership.seq_len}, hidden has L={L}")
    if membership.span_mask.shape[0] != B:
        raise ValueError(f"membership has {membership.span_mask.shape[0]} examples, hidden has B={B}")
    return membership.num_spans


POOL_IMPLS = ("auto", "index_add", "sparse")


def pool_spans(
    hidden: Tensor,
    membership: SpanMembership,
    weights: Tensor | None = None,
    eps: float = 1e-8,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Weighted centres of mass of the spans: ``c_u = Σ_t w_t h_t / Σ_t w_t`` and ``m_u = Σ_t w_t``.

    Args:
        hidden: ``(B, L, D)`` token states (gradients flow back to them).
        membership: which tokens form which span (``seq_len == L``).
        weights: ``(B, L)`` token weights; ``None`` = uniform 1 (mean pooling, mass = token count).
        eps: floor of the mass in the division (an empty span gets centre 0 and mass 0).
        impl: the one segment-sum op. ``"index_add"``: gather the member rows, ``index_add_`` them
            into their spans (the GPU path). ``"sparse"``: one sparse ``(B*S, B*L)`` weight matrix times
            the flat states (the CPU path: CPU ``index_add_`` is slow with several threads).
            ``"auto"``: ``sparse`` on the CPU, ``index_add`` elsewhere. Both give the same result.

    Returns:
        ``centres (B, S, D)`` in float32 (float64 if ``hidden`` is float64) and ``mass (B, S)``.
    """
    if impl not in POOL_IMPLS:
        raise ValueError(f"Unknown pool_spans impl {impl!r}; valid: {', '.join(POOL_IMPLS)}")
    B, L, D = hidden.shape
    S = _check_membership(membership, B, L)
    dtype = _compute_dtype(hidden)
    flat = hidden.reshape(B * L, D)
    tok, span = membership.token_index, membership.span_index
    if weights is None:
        w = torch.ones(tok.shape[0], dtype=dtype, device=hidden.device)
    else:
        if weights.shape != (B, L):
            raise ValueError(f"weights must have shape (B, L) = {(B, L)}, got {tuple(weights.shape)}")
        w = weights.reshape(B * L).index_select(0, tok).to(dtype)

    if impl == "auto":
        impl = "sparse" if hidden.device.type == "cpu" else "index_add"
    # The span sums stay in ``dtype`` (float32) inside a bf16/fp16 autocast region too: autocast
    # would recast the sparse product's dense operand to bf16, and the CPU sparse backward then
    # fails ("expected scalar type Float but found BFloat16"); bf16 sums also lose too much.
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        if impl == "sparse":
            matrix = torch.sparse_coo_tensor(
                torch.stack([span, tok]),
                w,
                (B * S, B * L),
                dtype=dtype,
                device=hidden.device,
                check_invariants=False,
            )
            num = torch.sparse.mm(matrix, flat.to(dtype))
        else:
            gathered = flat.index_select(0, tok).to(dtype)  # (P, D)
            num = torch.zeros(B * S, D, dtype=dtype, device=hidden.device).index_add_(
                0, span, gathered * w[:, None]
            )
        mass = torch.zeros(B * S, dtype=dtype, device=hidden.device).index_add_(0, span, w)
        centres = num / mass.clamp_min(eps)[:, None]
    return centres.view(B, S, D), mass.view(B, S)


def token_mask_from_membership(membership: SpanMembership, B: int, L: int) -> Tensor:
    """``(B, L)`` bool: the tokens that belong to at least one span."""
    _check_membership(membership, B, L)
    mask = torch.zeros(B * L, dtype=torch.bool, device=membership.token_index.device)
    mask[membership.token_index] = True
    return mask.view(B, L)


def normalize_in_spans(
    weights: Tensor, membership: SpanMembership, eps: float = 1e-12, inside: Tensor | None = None
) -> Tensor:
    """Weights of the tokens inside at least one span, renormalized to sum to 1 per sample; others 0.

    The reference's ``gather_layer_weights``. A sample with no in-span token (or zero total weight)
    gets all zeros. ``inside``: :func:`token_mask_from_membership` of ``membership`` when the caller
    already has it (saves recomputing it per layer).
    """
    B, L = weights.shape
    if inside is None:
        inside = token_mask_from_membership(membership, B, L)
    elif inside.shape != (B, L) or inside.dtype != torch.bool:
        raise ValueError(
            f"inside must be a (B, L) = {(B, L)} bool mask, got {tuple(inside.shape)} {inside.dtype}"
        )
    w = weights * inside
    return w / w.sum(dim=1, keepdim=True).clamp_min(eps)


def uniform_weights(attention_mask: Tensor) -> Tensor:
    """``(B, L)`` float: 1 for real tokens, 0 for padding (``no-weight`` ablation)."""
    return attention_mask.to(torch.float32)


def _column_mean_over_queries(attn: Tensor, mask: Tensor) -> Tensor:
    """``w_j = mean_i attn[b, i, j]`` over the valid query rows ``i``; padding columns set to 0."""
    m = mask.to(attn.dtype)
    received = torch.einsum("bij,bi->bj", attn, m)
    return received / m.sum(dim=1, keepdim=True).clamp_min(1.0) * m


@torch.no_grad()
def self_similarity_weights(hidden: Tensor, attention_mask: Tensor, query_rows: str = "valid") -> Tensor:
    """MTA's parameter-free salience (papers.md §2.2), detached, ``(B, L)`` float32.

    ``Hn = H / (std_D(H) + 1e-5)`` (torch's default, unbiased std over the hidden dimension);
    ``A = softmax_row(Hn Hn^T / sqrt(D))`` with pad keys and the diagonal masked out; ``A`` is
    multiplied by the key mask and renormalized; ``w_j`` is the column mean over the valid query
    rows (``query_rows="valid"``) or over all ``L`` rows, padding rows included (``"all"``: the MTA
    reference's ``compute_token_weights``, ``mean(dim=1)``; a padding row is a distribution over the real
    keys too). Over a sample with at least two real tokens the weights sum to one; padding gets 0.
    Memory: one ``(B, L, L)`` float32 matrix.
    """
    if query_rows not in ("valid", "all"):
        raise ValueError(f"query_rows={query_rows!r}; valid: valid, all")
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"need hidden (B, L, D) and attention_mask (B, L); got {tuple(hidden.shape)}, {tuple(attention_mask.shape)}"
        )
    h = hidden.detach().to(_compute_dtype(hidden))
    B, L, D = h.shape
    # torch.std's unbiased std as a centred two-pass sum: the same value to an ulp, and on the CPU
    # several times faster than torch.std's last-dim reduction (the largest MTA stage before)
    centred = h - h.mean(dim=-1, keepdim=True)
    std = centred.square_().sum(dim=-1, keepdim=True).div_(max(D - 1, 1)).sqrt_()
    hn = h / std.add_(1e-5)
    del centred
    # the (B, L, L) work is in place (no grad here): one score buffer and one softmax output; the
    # 1/sqrt(D) scale is the product's alpha, the masks broadcast (no (B, L, L) mask is built)
    scores = torch.baddbmm(h.new_empty(B, L, L), hn, hn.transpose(1, 2), beta=0.0, alpha=1.0 / math.sqrt(D))
    keys = attention_mask.bool()
    # blocked scores become the lowest float (not -inf: a row with no allowed key stays finite): the
    # padding keys by adding it (any real score is far below its rounding step, so the sum is exactly
    # it; cheaper than a broadcast masked_fill on the CPU), the query itself by filling the diagonal
    lowest = torch.finfo(scores.dtype).min
    scores.add_(scores.new_zeros(B, 1, L).masked_fill_(~keys.unsqueeze(1), lowest))
    scores.diagonal(dim1=1, dim2=2).fill_(lowest)
    attn = torch.softmax(scores, dim=-1)
    del scores
    # a row with an allowed key puts exactly 0 on the blocked ones (exp underflows) and sums to 1;
    # a row without one (a sample of at most one real token) is uniform here and must count 0
    n_keys = keys.sum(dim=1, keepdim=True)  # (B, 1)
    has_key = (n_keys - keys.long()) > 0  # (B, L): row i has a real key other than itself
    if query_rows == "all":
        rows = has_key.to(attn.dtype) / L  # the mean over all L rows, padding rows included
    else:
        rows = (has_key & keys).to(attn.dtype) / n_keys.clamp_min(1).to(attn.dtype)
    received = torch.bmm(rows.unsqueeze(1), attn).squeeze(1)  # (B, L): sum_i rows_i attn_ij
    return (received * keys).float()


@torch.no_grad()
def attention_received_weights(attn: Tensor, attention_mask: Tensor) -> Tensor:
    """Attention each token *receives*: mean over heads, column mean over valid query rows; ``(B, L)``.

    ``attn`` is a model's own ``(B, H, L, L)`` attention (rows = queries). Detached; padding gets 0.
    With causal attention whose rows sum to one over real keys, a sample's weights sum to one.
    """
    if (
        attn.dim() != 4
        or attn.shape[0] != attention_mask.shape[0]
        or attn.shape[-1] != attention_mask.shape[1]
    ):
        raise ValueError(
            f"need attn (B, H, L, L) and attention_mask (B, L); got {tuple(attn.shape)}, {tuple(attention_mask.shape)}"
        )
    a = attn.detach().to(_compute_dtype(attn)).mean(dim=1)
    return _column_mean_over_queries(a, attention_mask.bool()).float()


@torch.no_grad()
def entropy_weights(logits: Tensor, attention_mask: Tensor, chunk_size: int = 64) -> Tensor:
    """Teacher confidence ``w_t = 1 - H(p_t) / log|V|`` (papers.md §2.2 ``--entropy_weight``), ``(B, L)``.

    Computed in float32 over chunks of ``chunk_size`` positions, so the float32 copy of the logits
    never exceeds ``B * chunk_size * V``. Detached; padding gets 0.
    """
    if logits.dim() != 3 or attention_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits (B, L, V) and attention_mask (B, L); got {tuple(logits.shape)}, {tuple(attention_mask.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    V = logits.shape[-1]
    parts = []
    for chunk in logits.detach().split(chunk_size, dim=1):  # a loop over position chunks, not samples
        probs = torch.softmax(chunk.float(), dim=-1)
        parts.append(torch.special.entr(probs).sum(dim=-1))  # entr(p) = -p log p, 0 at p = 0
    entropy = torch.cat(parts, dim=1)
    return (1.0 - entropy / math.log(V)) * attention_mask.to(torch.float32)


# --------------------------------------------------------------------------------------------
# SRA: token weights from one query row of a model's own attention (ctkd.md §2.2)
# --------------------------------------------------------------------------------------------
#: Valid values of ``query_positions(query=...)``.
QUERY_POSITIONS = ("last_real", "last_position")


def query_positions(attention_mask: Tensor, query: str = "last_real") -> Tensor:
    """``(B,)`` long: the query position whose attention row gives SRA's token weights.

    * ``"last_real"``: the last real token of each sample (the last 1 of ``attention_mask``; right or
      left padding alike), as ``SRAv4/utils.py`` (``attention_mask.sum() - 1`` with right padding).
      A sample without real tokens gets ``L - 1`` (its weights are all 0 anyway).
    * ``"last_position"``: ``L - 1`` for every sample, the last *padded* position: the release's quirk
      (``SRE@d32ad955:utils.py::get_span_hidden_states``, ``attentions[i-1].sum(dim=1)[:, -1]``).
      With right padding a shorter sample's weights then come from a padding query, which (in HF's
      causal + padding masks) attends to all of that sample's real tokens.
    """
    plain = getattr(query, "value", query)
    if plain not in QUERY_POSITIONS:
        raise ValueError(f"query={query!r} is not valid; choose one of {list(QUERY_POSITIONS)}")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, L), got {tuple(attention_mask.shape)}")
    B, L = attention_mask.shape
    if plain == "last_position":
        return torch.full((B,), L - 1, dtype=torch.long, device=attention_mask.device)
    real = attention_mask.bool().flip(dims=(1,)).to(torch.int8)
    return (L - 1) - real.argmax(dim=1).long()


def query_rows(attn: Tensor, positions: Tensor) -> Tensor:
    """``(B, H, L)``: row ``positions[b]`` of each sample's full ``(B, H, L, L)`` attention map.

    ``rows[b, h, j] = attn[b, h, positions[b], j]`` (rows = queries). For callers that hold the full
    map (HF ``output_attentions=True``); a capture that keeps only the row delivers this directly.
    """
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"need attn (B, H, L, L), got {tuple(attn.shape)}")
    if positions.shape != (attn.shape[0],):
        raise ValueError(f"positions must be ({attn.shape[0]},), got {tuple(positions.shape)}")
    batch = torch.arange(attn.shape[0], device=attn.device)
    return attn[batch, :, positions.to(attn.device).long(), :]


@torch.no_grad()
def last_query_attention_weights(rows: Tensor | None, attention_mask: Tensor) -> Tensor:
    """SRA's token weights: one query row of a model's own attention, summed over heads, normalized.

    ``rows (B, H, L)`` is the attention of the query ``q_b`` (:func:`query_positions`) at the layer
    *below* the pooled hidden state: for HF ``hidden_states[l]``, attention layer ``l - 1``
    (0-based). ``attention_mask (B, L)``, 1 = real token::

        a_b(j) = Σ_h rows[b, h, j] · mask[b, j] / Σ_j' Σ_h rows[b, h, j'] · mask[b, j']

    Follows ``SRE@d32ad955:utils.py::get_span_hidden_states`` (``weights = attentions[i-1].sum(dim=1)
    [:, -1].detach(); weights / weights.sum(-1, keepdim=True)``). The denominator runs over all real
    keys, the prompt included. The padding keys are zeroed explicitly (in the reference they are 0
    through the causal and padding masks); a row with no weight on real keys gives all zeros instead
    of the reference's ``0 / 0``. Each model's own weights pool that model's own states.

    Detached, ``(B, L)`` float32 (float64 stays float64). Missing rows (``None``: an ``sdpa``
    attention returns no weights) raise, where the reference silently used ``torch.ones``.
    """
    if rows is None:
        raise ValueError(
            "last_query_attention_weights: no attention rows (an sdpa/flash attention returns no "
            "weights); run the model with attn_implementation='eager' or capture the query rows"
        )
    if attention_mask.dim() != 2 or rows.dim() != 3 or rows.shape[0] != attention_mask.shape[0]:
        raise ValueError(
            f"need rows (B, H, L) and attention_mask (B, L); got {tuple(rows.shape)}, "
            f"{tuple(attention_mask.shape)}"
        )
    if rows.shape[-1] != attention_mask.shape[1]:
        raise ValueError(
            f"rows have {rows.shape[-1]} keys but attention_mask has L={attention_mask.shape[1]}"
        )
    dtype = _compute_dtype(rows)
    weights = rows.detach().to(dtype).sum(dim=1) * attention_mask.to(dtype)
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))
