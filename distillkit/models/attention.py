"""Attention on demand: capture only the layers an objective names, in the form it asks for.

HF's ``output_attentions=True`` needs eager attention on every layer and returns every layer's
``(B, H, L, L)`` map (a 7B teacher at batch 4 x 512 holds ~2 GB of maps for nothing). distillkit
instead registers two attention implementations with transformers' ``AttentionInterface``:

* ``distillkit_sdpa`` (the default when an objective needs attention): every layer runs PyTorch's
  SDPA kernel as ``attn_implementation="sdpa"`` would; on the named layers only, the needed
  attention probabilities are recomputed from the same (rotated, per-head) queries and keys the
  kernel received: one query row per sample ``softmax(q_b K^T * scale)`` for ``attention_rows``
  (``O(B·H·L·d)``, no ``L x L`` map), or the full map for ``attentions``.
* ``distillkit_eager``: every layer runs the family's own eager attention and the named layers keep
  (a row of) the probabilities it computed. Slower; kept to check the first one and to benchmark.

Both keep only the named layers' tensors, detached, and reduce them as they are produced. The
probabilities are the pre-dropout ones (identical to eager at dropout 0, i.e. in eval mode).
A model whose attention does not go through ``AttentionInterface`` (or a layer that was never
reached) fails loudly after the forward, naming the config key; it never becomes uniform weights.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from distillkit.types import Needs

SDPA = "distillkit_sdpa"
EAGER = "distillkit_eager"
IMPLEMENTATIONS = (SDPA, EAGER)


class AttentionCaptureError(RuntimeError):
    """A requested attention layer produced no weights."""


class _Capture:
    """What to keep from one forward: ``full`` layers, ``rows`` layers at ``query``; filled per layer."""

    def __init__(self, full: tuple[int, ...], rows: tuple[int, ...], query: str, attention_mask: Tensor):
        self.full, self.rows, self.query = set(full), set(rows), query
        self.mask = attention_mask.bool()  # (B, L) real tokens (right padding)
        L = self.mask.shape[1]
        last_real = self.mask.long().sum(1).clamp(min=1) - 1
        self.q_pos = last_real if query == "last_real" else torch.full_like(last_real, L - 1)
        self.attentions: dict[int, Tensor] = {}
        self.attention_rows: dict[int, Tensor] = {}

    def key_mask(self, L: int) -> Tensor:
        """(B, L, L) allowed (query, key): causal and real keys, as the model's own mask."""
        causal = torch.ones(L, L, dtype=torch.bool, device=self.mask.device).tril()
        return causal[None] & self.mask[:, None, :L]

    def record(self, layer: int, query: Tensor, key: Tensor, scaling: float | None, probs: Tensor | None):
        """``query`` (B, H, L, d), ``key`` (B, Hkv, L, d); ``probs`` the eager path's (B, H, L, L) or None."""
        with torch.no_grad():
            if probs is None:
                if key.shape[1] != query.shape[1]:  # grouped-query attention
                    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
                scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            B, L = query.shape[0], query.shape[2]
            if layer in self.full:
                if probs is None:
                    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
                    scores = scores.masked_fill(~self.key_mask(L)[:, None], float("-inf"))
                    full = scores.softmax(-1)
                else:
                    full = probs.float()
                self.attentions[layer] = full.nan_to_num(0.0).detach()
            if layer in self.rows:
                pos = self.q_pos.to(query.device)
                if probs is None:
                    q = query[torch.arange(B, device=query.device), :, pos]  # (B, H, d)
                    scores = torch.einsum("bhd,bhld->bhl", q.float(), key.float()) * scale
                    allowed = self.mask[:, :L] & (torch.arange(L, device=query.device)[None] <= pos[:, None])
                    row = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
                else:
                    row = probs[torch.arange(B, device=probs.device), :, pos].float()  # (B, H, L)
                self.attention_rows[layer] = row.nan_to_num(0.0).detach()


def _family_eager(module: nn.Module):
    family = sys.modules[type(module).__module__]
    fn = getattr(family, "eager_attention_forward", None)
    if fn is None:
        raise AttentionCaptureError(f"{type(module).__name__} has no eager_attention_forward to run")
    return fn


def _sdpa_capture(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    capture = getattr(module, "_distillkit_capture", None)
    if capture is not None:
        capture[0].record(capture[1], query, key, scaling, None)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


def _eager_capture(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    out, probs = _family_eager(module)(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    capture = getattr(module, "_distillkit_capture", None)
    if capture is not None:
        capture[0].record(capture[1], query, key, scaling, probs)
    return out, probs


def register() -> None:
    """Registers both implementations (idempotent): ``attn_implementation="distillkit_sdpa"`` then
    works in ``from_pretrained`` / ``from_config`` / ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(SDPA, _sdpa_capture)
    AttentionInterface.register(EAGER, _eager_capture)
    AttentionMaskInterface.register(SDPA, sdpa_mask)
    AttentionMaskInterface.register(EAGER, eager_mask)


register()


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer, in order (GPT-2 ``h[i].attn``; Llama, Qwen2,
    Mistral ``layers[i].self_attn``; OPT ``decoder.layers[i].self_attn``; through peft wrappers too)."""
    n = int(model.config.num_hidden_layers)
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            found = [getattr(block, "self_attn", None) or getattr(block, "attn", None) for block in mod]
            if all(isinstance(a, nn.Module) for a in found):
                return found
    raise AttentionCaptureError(
        f"could not find the {n} decoder layers' attention modules of {type(model).__name__}"
    )


@contextmanager
def capture_attention(model: nn.Module, needs: Needs, attention_mask: Tensor, role: str = "model"):
    """Within the block, one forward of ``model`` records the attention ``needs`` names; yields the
    :class:`_Capture` whose ``attentions`` / ``attention_rows`` are filled (checked on exit)."""
    if not needs.any_attention:
        yield None
        return
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in IMPLEMENTATIONS:
        raise AttentionCaptureError(
            f"the {role} runs attn_implementation={impl!r}, which returns no attention weights to capture; "
            f"set model.{role}.attn_implementation to {SDPA} (default for methods that need attention) or {EAGER}"
        )
    cap = _Capture(needs.attentions, needs.attention_rows, needs.attention_query, attention_mask)
    mods = attention_modules(model)
    wanted = sorted(set(needs.attentions) | set(needs.attention_rows))
    bad = [i for i in wanted if not 0 <= i < len(mods)]
    if bad:
        raise AttentionCaptureError(f"attention layers {bad} out of range: the {role} has {len(mods)} layers")
    for i in wanted:
        mods[i]._distillkit_capture = (cap, i)
    try:
        yield cap
    finally:
        for i in wanted:
            del mods[i]._distillkit_capture
    missing = [i for i in needs.attentions if i not in cap.attentions]
    missing += [i for i in needs.attention_rows if i not in cap.attention_rows]
    if missing:
        raise AttentionCaptureError(
            f"the {role}'s attention layers {sorted(set(missing))} produced no weights (its attention does not "
            f"go through transformers' AttentionInterface); set model.{role}.attn_implementation={EAGER}"
        )
