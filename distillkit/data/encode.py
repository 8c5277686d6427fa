"""Tokenizing one example with ONE model's own tokenizer, keeping character offsets.

The text of an example is ``prompt + response``; each model tokenizes it with its own tokenizer
(prompt with the tokenizer's special tokens, e.g. a BOS; response without), appends its own EOS,
and keeps ``offset_mapping`` into that same text, so cross-tokenizer methods align by characters.
Labels are the next-token targets, shifted already: ``labels[i]`` is the token that
``logits[i]`` must predict, ``-100`` outside the response (+EOS). The EOS is trained on (so the
student learns to stop) and padding is masked by the attention mask, never by a pad id
(GPT-2's pad would be its EOS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    valid: list[bool]  # False for special tokens (BOS/EOS): never part of a span
    prompt_len: int  # number of prompt tokens


@dataclass
class Example:
    index: int
    text: str
    prompt_chars: int
    references: list[str]
    student: Encoded
    teacher: Encoded
    # unit set name -> side ("student"/"teacher") -> spans -> token indices; filled by annotators
    spans: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    aligned: dict[str, tuple[list[list[int]], list[list[int]]]] = field(default_factory=dict)
    # alignment name -> 1:1 token pairs [(student position, teacher position), ...]; filled by annotators
    pairs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer {tokenizer.name_or_path!r} has no EOS token; set one before training."
        )
    return int(tokenizer.eos_token_id)


def encode(tokenizer: Any, prompt: str, response: str) -> Encoded:
    """Prompt + response + EOS with offsets into ``prompt + response``."""
    p = tokenizer(
        prompt, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    r = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(prompt)
    ids = list(p["input_ids"]) + list(r["input_ids"]) + [eos_id(tokenizer)]
    special = list(p["special_tokens_mask"]) + [0] * len(r["input_ids"]) + [1]
    offsets = [tuple(o) for o in p["offset_mapping"]]
    offsets += [(s + shift, e + shift) for s, e in r["offset_mapping"]]
    offsets.append((0, 0))
    offsets = [(0, 0) if sp else o for o, sp in zip(offsets, special)]
    n_prompt = len(p["input_ids"])
    labels = [ids[i + 1] if i + 1 >= n_prompt else -100 for i in range(len(ids) - 1)] + [-100]
    return Encoded(ids, labels, offsets, [not s for s in special], n_prompt)


def fits(enc: Encoded, max_prompt_tokens: int, max_total_tokens: int) -> bool:
    return enc.prompt_len <= max_prompt_tokens and len(enc.input_ids) <= max_total_tokens
