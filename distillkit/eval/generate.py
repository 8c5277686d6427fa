"""Batched, seeded generation of responses with a Hugging Face causal LM.

The papers' behaviour (DSKD ``evaluate_main.py`` / ``PromptDataset``):

* prompts are tokenized without special tokens and keep their FIRST ``max_prompt_tokens`` tokens
  (``add_special_tokens=True``: with the tokenizer's own, e.g. OPT/Llama's BOS, as the MTA and SRA
  evaluators do); a prompt's characters are always text (special-token splitting, as data preparation:
  ``distillkit.data.encode.tokenize_text``);
* every prompt gets ``max_total_tokens - max_prompt_tokens`` new tokens (capped by ``max_new_tokens``),
  so prompt + response never exceeds ``max_total_tokens``;
* the response is the new tokens up to the first EOS, decoded without special tokens, cut at the
  ``stop`` string when there is one (``keep_stop=True``: left in, as the MTA evaluator scores it), and
  stripped.

Stop rules (``stop_rule``): ``string`` stops a sequence once its generated text contains ``stop``;
``token`` (the MTA evaluator's ``StopOnToken``) stops a sequence when its last generated token is the
first token of ``tokenizer.encode(stop, add_special_tokens=False)``. Both act per sequence: the MTA
evaluator's criterion looks only at the first sequence of a batch and stops the whole batch with it
(so its scores depend on the batching); that is not reproduced.

Batches are left-padded (the KV cache needs the prompts to end together) and formed from prompts
sorted by length, longest first, so padding is small and an out-of-memory error shows up at once.
Each batch reseeds the RNG with a value derived from ``(seed, batch index)``, inside a forked RNG
state, so the same seed gives the same samples and the caller's RNG stream (training) is untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from distillkit.eval.protocol import STOP_RULES, new_token_budget
from distillkit.utils.io import stable_hash


def batch_seed(seed: int, batch_index: int) -> int:
    """The RNG seed of one batch, a stable function of the generation seed and the batch index."""
    return int(stable_hash("generate", int(seed), int(batch_index)), 16) % (2**63)


class _StopOnString(StoppingCriteria):
    """Stop a sequence once its generated text contains ``stop``.

    Only the last few generated tokens are decoded at each step (a stop string of L characters spans at
    most L tokens, plus a margin for byte-level pieces), and never the prompt: the MiniLLM template's
    own ``### Response:`` must not count.
    """

    def __init__(self, tokenizer: Any, stop: str, prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_width = prompt_width
        self.window = len(stop) + 4

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        tails = input_ids[:, self.prompt_width :][:, -self.window :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([self.stop in t for t in texts], dtype=torch.bool, device=input_ids.device)


class _StopOnToken(StoppingCriteria):
    """Stop a sequence when its last token is ``stop_id`` (per sequence; see the module docstring)."""

    def __init__(self, stop_id: int) -> None:
        self.stop_id = int(stop_id)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        return input_ids[:, -1] == self.stop_id


def stop_token_id(tokenizer: Any, stop: str) -> int:
    """The MTA evaluator's stop id: the first token of ``stop`` encoded without special tokens."""
    ids = tokenizer(stop, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"stop={stop!r} encodes to no token with {type(tokenizer).__name__}")
    return int(ids[0])


def auto_frame(tokenizer: Any) -> Any:
    """The frame of ``tokenizer``'s own chat template (``None`` without one): a prompt rendered with it
    keeps its control tokens, any other prompt does not match the frame and is tokenized as text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    from distillkit.data.encode import prompt_frame

    return prompt_frame("chat", tokenizer)


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], *, add_special_tokens: bool = False, frame: Any = None
) -> list[list[int]]:
    """Prompt ids as data preparation makes them: special-token splitting (a prompt's characters are
    text), the tokenizer's own special tokens only with ``add_special_tokens``, and a template ``frame``
    (:func:`distillkit.data.encode.prompt_frame`) keeping the template's control tokens."""
    if not getattr(tokenizer, "is_fast", False):  # no offsets: the tokenizer's own splitting only
        enc = tokenizer(list(prompts), add_special_tokens=add_special_tokens, split_special_tokens=True)
        return [list(row) for row in enc["input_ids"]]
    from distillkit.data.encode import tokenize_text

    return [
        tokenize_text(tokenizer, p, add_special_tokens=add_special_tokens, frame=frame).ids for p in prompts
    ]


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _generation_config(
    *,
    do_sample: bool,
    top_k: int,
    top_p: float,
    temperature: float,
    no_repeat_ngram_size: int,
    budget: int,
    eos_token_id: int,
    pad_token_id: int,
) -> GenerationConfig:
    """Every knob set explicitly: ``generate`` fills unset (None) fields from the model's own
    ``generation_config.json`` (Qwen's sets repetition_penalty 1.05, top_k 20, ...), which would
    silently change the protocol."""
    sampling = (
        {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    )  # HF warns about sampling knobs in greedy mode
    return GenerationConfig(
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=1,
        no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_penalty=1.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        min_length=0,
        max_new_tokens=budget,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        return_dict_in_generate=False,
        **sampling,
    )


def generate_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    seed: int = 10,
    do_sample: bool = True,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    no_repeat_ngram_size: int = 6,
    max_prompt_tokens: int = 256,
    max_total_tokens: int | None = 512,
    max_new_tokens: int | None = None,
    stop: str | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    add_special_tokens: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop_rule: str = "string",
    keep_stop: bool = False,
    frame: Any = "auto",
) -> list[str]:
    """Generate one response per prompt, returned in the order of ``prompts``.

    ``device`` defaults to the model's device (the model is not moved). The tokenizer is never
    modified: a tokenizer without a pad token (GPT-2) pads with EOS here only. Prompts are tokenized
    without special tokens, as DSKD's evaluation does (``add_special_tokens=True`` adds e.g. LLaMA's
    BOS). ``progress(done, total)`` is called after each batch. ``stop_rule``/``keep_stop``: see the
    module docstring; ``frame``: the template's control tokens (:func:`encode_prompts`); ``"auto"``: the
    tokenizer's own chat template, applied to the prompts it frames (prompts rendered with
    ``data.template=chat`` for this tokenizer), every other prompt tokenized as text.
    """
    if stop_rule not in STOP_RULES:
        raise ValueError(f"stop_rule={stop_rule!r}; valid: {', '.join(STOP_RULES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be >= 1.")
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens={max_prompt_tokens}; must be >= 1.")
    budget = new_token_budget(max_prompt_tokens, max_total_tokens, max_new_tokens)
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no eos_token_id; generation needs one to stop."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if not prompts:
        return []

    if frame == "auto":
        frame = auto_frame(tokenizer)
    ids = encode_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens, frame=frame)
    ids = [row[:max_prompt_tokens] for row in ids]  # keep the FIRST tokens, as DSKD and MTA do
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(
            f"Prompts at positions {empty[:10]} tokenize to nothing; an empty prompt cannot be continued."
        )

    device = torch.device(device) if device is not None else _model_device(model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep their input order
    gen_config = _generation_config(
        do_sample=do_sample,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        no_repeat_ngram_size=no_repeat_ngram_size,
        budget=budget,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    if stop and stop_rule == "token":
        stop_id = stop_token_id(tokenizer, stop)
        stopper: Callable[[int], StoppingCriteria] = lambda width: _StopOnToken(stop_id)  # noqa: E731
    else:
        stopper = lambda width: _StopOnString(tokenizer, stop, width)  # noqa: E731
    cut_at = None if keep_stop else stop
    responses: list[str | None] = [None] * len(ids)
    n_batches = math.ceil(len(order) / batch_size)
    rng_devices = [device] if device.type == "cuda" else []

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.inference_mode(), _autocast(device):
            for b in range(n_batches):
                members = order[b * batch_size : (b + 1) * batch_size]
                width = max(len(ids[i]) for i in members)
                input_ids = torch.full((len(members), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(members), width), dtype=torch.long)
                for row, i in enumerate(members):  # left padding
                    input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i], dtype=torch.long)
                    attention_mask[row, width - len(ids[i]) :] = 1
                stopping = StoppingCriteriaList([stopper(width)]) if stop else None
                torch.manual_seed(batch_seed(seed, b))
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=gen_config,
                    stopping_criteria=stopping,
                )
                new_tokens = out[:, width:].tolist()
                for row, i in enumerate(members):
                    tokens = new_tokens[row]
                    if eos_id in tokens:
                        tokens = tokens[: tokens.index(eos_id)]
                    responses[i] = _finish(tokenizer.decode(tokens, skip_special_tokens=True), cut_at)
                if progress is not None:
                    progress(min((b + 1) * batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return [r if r is not None else "" for r in responses]


def _finish(text: str, stop: str | None) -> str:
    """Cut at the stop string (when given) and strip surrounding whitespace."""
    if stop:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text.strip()
