"""Handles onto a model's output head and input embeddings, for objectives that need them in the step.

A handle is a plain object, not an ``nn.Module`` attribute of the method: the method's ``state_dict``
never holds a head or an embedding (a registered teacher head would put the Qwen head, 0.6 GB, in every
checkpoint; a registered student head would put its parameters in two optimizer groups). Calling a
handle calls the model's own module (so its hooks, e.g. FSDP's, run) and slices the output to the
tokenizer's real vocabulary, exactly as the logits are sliced.
"""

from __future__ import annotations

from torch import Tensor, nn


class OutputHead:
    """``hidden (.., D) -> logits (.., V)`` through the model's own output head, V = len(tokenizer).

    Apply it to the last hidden state only (``hidden_states[n_layers]``: after the final norm, and after
    OPT's ``project_out``, in every supported family); intermediate layers never go through a head.
    """

    def __init__(self, model: nn.Module, vocab_size: int):
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output head (get_output_embeddings() is None)")
        self.module, self.vocab_size = head, int(vocab_size)

    @property
    def weight(self) -> Tensor:
        """The ``(V, D)`` head matrix (rows beyond the tokenizer's vocabulary dropped)."""
        return self.module.weight[: self.vocab_size]

    @property
    def bias(self) -> Tensor | None:
        bias = getattr(self.module, "bias", None)
        return bias[: self.vocab_size] if bias is not None else None

    def __call__(self, hidden: Tensor) -> Tensor:
        return self.module(hidden)[..., : self.vocab_size]


class InputEmbedding:
    """``ids (..) -> embeddings (.., D_emb)``: the model's own token-embedding lookup (GPT-2 ``wte``,
    without the position embedding; OPT before ``project_in``)."""

    def __init__(self, model: nn.Module):
        self.module = model.get_input_embeddings()

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    def __call__(self, ids: Tensor) -> Tensor:
        return self.module(ids)
