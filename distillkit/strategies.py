"""Distributed strategies that need more than a name in YAML.

FSDP: every transformer block of the teacher and of the student becomes its own FSDP unit, so frozen
(teacher) and trainable (student) parameters never share a flat parameter (fairscale #1119,
pytorch #104690); ``use_orig_params=True`` covers the root unit, which holds both embeddings.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

#: decoder-block class names of the families distillkit ships pairs for
BLOCK_CLASSES = frozenset(
    {"GPT2Block", "LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "OPTDecoderLayer"}
)


def _is_block(module: nn.Module, names: frozenset[str]) -> bool:
    return type(module).__name__ in names


def fsdp(block_classes: list[str] | None = None, **kwargs: Any) -> Any:
    """A Lightning ``FSDPStrategy`` wrapping each decoder block on its own (``kwargs`` go to the strategy)."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    names = frozenset(block_classes) if block_classes else BLOCK_CLASSES
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=functools.partial(_is_block, names=names))
    kwargs.setdefault("use_orig_params", True)
    return FSDPStrategy(auto_wrap_policy=policy, **kwargs)
