"""Tokenizing one example with ONE model's own tokenizer, keeping character offsets.

The text of an example is ``prompt + response``; each model tokenizes it with its own tokenizer
(prompt with the tokenizer's special tokens, e.g. a BOS; response without), appends its own EOS,
and keeps ``offset_mapping`` into that same text, so cross-tokenizer methods align by characters.
Labels are the next-token targets, shifted already: ``labels[i]`` is the token that
``logits[i]`` must predict, ``-100`` outside the response (+EOS). The EOS is trained on (so the
student learns to stop) and padding is masked by the attention mask, never by a pad id
(GPT-2's pad would be its EOS).

**A row's characters are always text.** Data text is tokenized with special-token splitting
(``split_special_tokens=True`` of HF tokenizers): a Dolly answer containing the literal string
``<|endoftext|>`` becomes the tokens of those 13 characters, never GPT-2's EOS id, so the student does
not learn to stop mid-answer and the span tools keep those characters aligned. The only special tokens
are the ones the encoder adds (the tokenizer's own BOS through ``add_special_tokens``, the EOS appended by
id) and, for a template that adds control tokens (``data.template=chat``), those of the template's own
text (:class:`PromptFrame`). :func:`tokenize_text` is the one place this is done; data preparation, the
eval prompts (``distillkit.eval.generate``), the on-policy re-encoding and ``python -m distillkit.spans``
all go through it.
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
    # alignments, filled once by the annotators the method's objectives declare (never in the step):
    # span grid name -> (student groups, teacher groups): group i covers the same characters on both
    # sides, each a list of that side's token positions (MTA's word/phrase units, SRA's co-segmentation)
    grids: dict[str, tuple[list[list[int]], list[list[int]]]] = field(default_factory=dict)
    # token-pair set name -> [(student position, teacher position), ...] (ETA, MinED)
    pairs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer {tokenizer.name_or_path!r} has no EOS token; set one before training."
        )
    return int(tokenizer.eos_token_id)


# ----------------------------------------------------------------------------- text -> tokens
#: a string no row contains, used to find where a template puts the row's content
_SENTINEL = "\x00distillkit-content\x00"


@dataclass(frozen=True)
class PromptFrame:
    """The template's own text around a row's content, for templates that add control tokens.

    A prompt ``prefix + content + suffix`` is tokenized in three pieces: the prefix and the suffix with
    the tokenizer's special tokens recognised (``<|im_start|>`` of a chat template stays one control
    token), the content with special-token splitting (a row's characters are text).
    """

    prefix: str
    suffix: str

    def split(self, text: str) -> tuple[str, str, str] | None:
        """``(prefix, content, suffix)`` when ``text`` is framed by this frame, else ``None``."""
        if (
            len(text) >= len(self.prefix) + len(self.suffix)
            and text.startswith(self.prefix)
            and text.endswith(self.suffix)
        ):
            return self.prefix, text[len(self.prefix) : len(text) - len(self.suffix)], self.suffix
        return None


def prompt_frame(template: Any, tokenizer: Any) -> PromptFrame | None:
    """The :class:`PromptFrame` of ``template`` rendered for ``tokenizer``; ``None`` for the templates whose
    text has no control tokens (``minillm``, ``none``: the whole prompt is then tokenized as text)."""
    name = str(getattr(template, "value", template))
    if name != "chat":
        return None
    from distillkit.data.template import format_prompt

    rendered = format_prompt({"instruction": _SENTINEL}, name, tokenizer)
    prefix, found, suffix = rendered.partition(_SENTINEL)
    if not found:  # pragma: no cover - a chat template that drops the user's content
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} does not place the user content")
    return PromptFrame(prefix, suffix)


@dataclass
class Tokens:
    """One text's tokens: ids, character offsets into the text, and which ids are special (added by the
    tokenizer for ``add_special_tokens``, or a template's control tokens; never a row's characters)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]


def _call(tokenizer: Any, text: str, add_special_tokens: bool, split: bool) -> Tokens:
    enc = tokenizer(
        text,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        split_special_tokens=split,
    )
    ids = list(enc["input_ids"])
    special = [bool(m) for m in enc["special_tokens_mask"]]
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    specials = set(tokenizer.all_special_ids)
    if not split:  # control tokens written in the (template's) text: special too
        special = [m or i in specials for i, m in zip(ids, special)]
    elif any(i in specials and not m for i, m in zip(ids, special)):
        ids, offsets, special = _respell(tokenizer, text, ids, offsets, special, specials)
    return Tokens(ids, offsets, special)


def _respell(
    tokenizer: Any,
    text: str,
    ids: list[int],
    offsets: list[tuple[int, int]],
    special: list[bool],
    specials: set[int],
) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    """Text that the tokenizer's MODEL still turns into a special id after special-token splitting (a
    Unigram/SentencePiece vocabulary that holds ``<s>`` as an ordinary piece): those characters are
    re-tokenized by the model in smaller pieces (first character, rest; else one per character), so
    they stay text. Byte-level BPE (GPT-2, Qwen, OPT) and Llama/Mistral's BPE never get here."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if model is None or not hasattr(model, "tokenize"):
        raise ValueError(
            f"{tokenizer.name_or_path!r} turns text into a special token even with special-token splitting, "
            f"and has no model to re-tokenize it with: {text!r}"
        )

    def pieces(start: int, end: int) -> list[tuple[int, tuple[int, int]]]:
        for chunks in ([(start, start + 1), (start + 1, end)], [(k, k + 1) for k in range(start, end)]):
            out = []
            for a, b in chunks:
                if a < b:
                    out += [(t.id, (a + t.offsets[0], a + t.offsets[1])) for t in model.tokenize(text[a:b])]
            if not any(i in specials for i, _ in out):
                return out
        raise ValueError(
            f"{tokenizer.name_or_path!r} cannot spell {text[start:end]!r} without a special token"
        )

    new_ids, new_offsets, new_special = [], [], []
    for i, o, m in zip(ids, offsets, special):
        if i in specials and not m and o[1] > o[0]:
            for pid, po in pieces(*o):
                new_ids.append(pid)
                new_offsets.append(po)
                new_special.append(False)
        else:
            new_ids.append(i)
            new_offsets.append(o)
            new_special.append(m)
    return new_ids, new_offsets, new_special


def _wrapper_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids ``add_special_tokens=True`` puts before and after a text (e.g. ``[BOS]``, ``[]``)."""
    core = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(core) + 1):
        if full[start : start + len(core)] == core:
            return list(full[:start]), list(full[start + len(core) :])
    raise ValueError(
        f"cannot tell where {tokenizer.name_or_path!r} puts its special tokens"
    )  # pragma: no cover


def tokenize_text(
    tokenizer: Any, text: str, *, add_special_tokens: bool = False, frame: PromptFrame | None = None
) -> Tokens:
    """``text`` tokenized with special-token splitting (its characters are text), offsets into ``text``.

    ``add_special_tokens`` adds the tokenizer's own (BOS for Llama/OPT, nothing for GPT-2/Qwen).
    With a ``frame`` that matches the text, the frame's prefix and suffix keep their control tokens.
    Needs a fast tokenizer (offsets).
    """
    parts = frame.split(text) if frame is not None else None
    if parts is None:
        return _call(tokenizer, text, add_special_tokens, split=True)
    pieces = [(parts[0], False), (parts[1], True), (parts[2], False)]
    before, after = _wrapper_tokens(tokenizer) if add_special_tokens else ([], [])
    ids, offsets, special = list(before), [(0, 0)] * len(before), [True] * len(before)
    shift = 0
    for piece, split in pieces:
        if piece:
            t = _call(tokenizer, piece, False, split=split)
            ids += t.ids
            offsets += [(a + shift, b + shift) for a, b in t.offsets]
            special += t.special
        shift += len(piece)
    ids += after
    offsets += [(0, 0)] * len(after)
    special += [True] * len(after)
    return Tokens(ids, offsets, special)


def encode(tokenizer: Any, prompt: str, response: str, frame: PromptFrame | None = None) -> Encoded:
    """Prompt + response + EOS with offsets into ``prompt + response``.

    The prompt gets the tokenizer's special tokens (``add_special_tokens=True``), the response none, and
    both are tokenized with special-token splitting (:func:`tokenize_text`); ``frame`` is the template's
    (:func:`prompt_frame`) when it adds control tokens.
    """
    p = tokenize_text(tokenizer, prompt, add_special_tokens=True, frame=frame)
    r = tokenize_text(tokenizer, response)
    shift = len(prompt)
    ids = p.ids + r.ids + [eos_id(tokenizer)]
    special = p.special + r.special + [True]
    offsets = list(p.offsets) + [(s + shift, e + shift) for s, e in r.offsets] + [(0, 0)]
    offsets = [(0, 0) if sp else o for o, sp in zip(offsets, special)]
    n_prompt = len(p.ids)
    labels = [ids[i + 1] if i + 1 >= n_prompt else -100 for i in range(len(ids) - 1)] + [-100]
    return Encoded(ids, labels, offsets, [not s for s in special], n_prompt)


def distillm_positions(enc: Encoded, eos: int) -> Encoded:
    """``enc`` without its final EOS, trained at DistiLLM's positions for generated samples.

    DistiLLM's ``SampleGenerator.run_sample`` (``distillm/sampler.py``) drops the pads (= EOS) and writes
    the response ids as labels at the response's OWN positions (``label[P:P+R] = response``), while its
    data labels are shifted (``label[t] = input[t+1]``, ``data_utils/lm_datasets.py``). Its losses mask
    with ``label != -100``, so on a generated sample it distils positions ``P .. P+R-1``: not the one that
    predicts the first response token (``P-1``), and the last response token's (which predicts what
    follows the response, the stop). Here those positions get labels: the next token, and EOS at the
    last one (DistiLLM's CE label there is the token itself, an off-by-one not reproduced)."""
    out = strip_eos(enc)
    labels = list(out.labels)
    labels[out.prompt_len - 1] = -100
    labels[-1] = int(eos)
    return Encoded(out.input_ids, labels, out.offsets, out.valid, out.prompt_len)


def strip_eos(enc: Encoded) -> Encoded:
    """``enc`` without its final EOS: the last response token predicts nothing (DistiLLM's generated
    samples, whose pad = EOS is stripped, ``distillm/sampler.py``). ``enc`` must end with the EOS
    :func:`encode` appends."""
    if not enc.input_ids or enc.valid[-1] or len(enc.input_ids) <= enc.prompt_len:
        raise ValueError("strip_eos: the encoding does not end with an appended EOS")
    labels = list(enc.labels[:-1])
    labels[-1] = -100
    return Encoded(
        list(enc.input_ids[:-1]), labels, list(enc.offsets[:-1]), list(enc.valid[:-1]), enc.prompt_len
    )


def fits(enc: Encoded, max_prompt_tokens: int, max_total_tokens: int) -> bool:
    return enc.prompt_len <= max_prompt_tokens and len(enc.input_ids) <= max_total_tokens
