"""Prompt templates: the MiniLLM/DSKD template by default, a tokenizer's chat template as an option."""

from __future__ import annotations

from typing import Any

MINILLM_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
MINILLM_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

TEMPLATES = ("minillm", "chat", "none")


def format_prompt(row: dict[str, Any], template: str = "minillm", tokenizer: Any = None) -> str:
    """The prompt text for a row ``{instruction, input?}``.

    ``minillm``: the MiniLLM/DSKD template (``process_data_dolly.py``), the papers' default.
    ``chat``: the tokenizer's chat template with one user turn (instruction, then input) and the
    generation prompt. ``none``: the instruction (and input) alone, separated by a blank line.
    """
    instruction = str(row.get("instruction", "")).strip("\n")
    inp = row.get("input") or ""
    inp = str(inp).strip("\n")
    if template == "minillm":
        if inp:
            return MINILLM_WITH_INPUT.format(instruction=instruction, input=inp)
        return MINILLM_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.template=chat needs a tokenizer with a chat_template; use 'minillm' instead."
            )
        content = instruction + (f"\n\n{inp}" if inp else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    if template == "none":
        return instruction + (f"\n\n{inp}" if inp else "") + "\n"
    raise ValueError(f"Unknown prompt template {template!r}; valid: {', '.join(TEMPLATES)}")


def references(row: dict[str, Any]) -> list[str]:
    """The reference answers of a row: ``output`` as a string or a list (S-NI has several)."""
    out = row.get("output")
    if isinstance(out, list):
        return [str(o) for o in out]
    return [] if out is None else [str(out)]
