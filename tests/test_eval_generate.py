"""Batched generation with a tiny random GPT-2 and the real GPT-2 tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from distillkit.eval.generate import _StopOnString, generate_responses

PROMPTS = [
    "Below is an instruction. Name three colours of the rainbow.\n\n### Response:\n",
    "Hi",
    "The quick brown fox jumps over the lazy dog, and then",
    "Tell me a story about a robot who learns to paint.",
    "What is 2 + 2?",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(gpt2_tokenizer):
    torch.manual_seed(1234)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=256, vocab_size=len(gpt2_tokenizer))
    return GPT2LMHeadModel(config).eval()


def gen(model, tok, prompts, **kw):
    args = {"max_prompt_tokens": 64, "max_total_tokens": 96, "batch_size": 3}
    args.update(kw)
    return generate_responses(model, tok, prompts, **args)


def test_same_seed_same_samples_different_seed_different(tiny_model, gpt2_tokenizer):
    a = gen(tiny_model, gpt2_tokenizer, PROMPTS, seed=10)
    b = gen(tiny_model, gpt2_tokenizer, PROMPTS, seed=10)
    c = gen(tiny_model, gpt2_tokenizer, PROMPTS, seed=20)
    assert a == b
    assert a != c
    assert len(a) == len(PROMPTS) and all(isinstance(x, str) for x in a)


def test_greedy_in_a_left_padded_batch_equals_alone(tiny_model, gpt2_tokenizer):
    batched = gen(tiny_model, gpt2_tokenizer, PROMPTS, do_sample=False, batch_size=len(PROMPTS))
    for prompt, out in zip(PROMPTS, batched):
        alone = gen(tiny_model, gpt2_tokenizer, [prompt], do_sample=False, batch_size=1)
        assert alone == [out]
    assert len(set(batched)) > 1  # the test is not vacuous: outputs differ between prompts


def test_output_order_follows_input_order(tiny_model, gpt2_tokenizer):
    kw = {"do_sample": False, "batch_size": 2}
    forward = gen(tiny_model, gpt2_tokenizer, PROMPTS, **kw)
    backward = gen(tiny_model, gpt2_tokenizer, PROMPTS[::-1], **kw)
    assert backward == forward[::-1]


def test_stop_string_cuts_the_response(tiny_model, gpt2_tokenizer):
    full = gen(tiny_model, gpt2_tokenizer, PROMPTS[:1], do_sample=False, no_repeat_ngram_size=0)[0]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2]  # a word that occurs in the greedy output
    cut = gen(tiny_model, gpt2_tokenizer, PROMPTS[:1], do_sample=False, no_repeat_ngram_size=0, stop=stop)[0]
    assert cut == full[: full.index(stop)].strip()
    assert stop not in cut


def test_stop_criterion_ignores_the_prompt(gpt2_tokenizer):
    tok = gpt2_tokenizer
    prompt = tok("### Response:\n")["input_ids"]
    clean = tok(" fine answer")["input_ids"]
    stopped = tok(" answer ### next")["input_ids"]
    width = len(prompt)
    n = max(len(clean), len(stopped))
    rows = [prompt + c + [tok.eos_token_id] * (n - len(c)) for c in (clean, stopped)]
    done = _StopOnString(tok, "###", width)(torch.tensor(rows), None)
    assert done.tolist() == [False, True]


def test_length_limits_hold(tiny_model, gpt2_tokenizer):
    seen = []
    model = copy.deepcopy(tiny_model)
    original = model.generate

    def spy(**kwargs):
        out = original(**kwargs)
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone(), out.clone()))
        return out

    model.generate = spy
    tok = gpt2_tokenizer
    long_prompt = " ".join(f"word{i}" for i in range(100))
    ids = tok(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 8
    gen(
        model,
        tok,
        [long_prompt, "Hi"],
        max_prompt_tokens=8,
        max_total_tokens=20,
        batch_size=2,
        no_repeat_ngram_size=0,
    )
    ((inp, mask, out),) = seen
    assert inp.shape[1] == 8
    assert inp[0].tolist() == ids[:8]  # the FIRST max_prompt_tokens tokens are kept (DSKD, MTA)
    assert mask[1].tolist() == [0] * (8 - len(tok("Hi")["input_ids"])) + [1] * len(tok("Hi")["input_ids"])
    assert out.shape[1] - inp.shape[1] <= 20 - 8
    assert out.shape[1] <= 20

    seen.clear()
    gen(model, tok, ["Hi"], max_prompt_tokens=8, max_total_tokens=20, max_new_tokens=3)
    ((inp, _, out),) = seen
    assert out.shape[1] - inp.shape[1] <= 3


def test_caller_state_is_untouched(tiny_model, gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.pad_token is None
    side = tok.padding_side
    model = copy.deepcopy(tiny_model).train()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gen(model, tok, PROMPTS[:2], seed=5)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is not consumed
    assert model.training  # training mode restored
    assert tok.pad_token is None and tok.pad_token_id is None and tok.padding_side == side


def test_model_generation_config_does_not_leak(tiny_model, gpt2_tokenizer):
    """A hub generation_config (Qwen sets repetition_penalty, top_k) must not change the protocol."""
    quirky = copy.deepcopy(tiny_model)
    quirky.generation_config.repetition_penalty = 50.0
    quirky.generation_config.top_k = 1
    quirky.generation_config.temperature = 0.01
    assert gen(quirky, gpt2_tokenizer, PROMPTS, seed=3) == gen(tiny_model, gpt2_tokenizer, PROMPTS, seed=3)


def test_empty_input_and_bad_arguments(tiny_model, gpt2_tokenizer):
    assert generate_responses(tiny_model, gpt2_tokenizer, []) == []
    with pytest.raises(ValueError, match="budget"):
        gen(tiny_model, gpt2_tokenizer, ["Hi"], max_prompt_tokens=64, max_total_tokens=64)
    with pytest.raises(ValueError, match="batch_size"):
        gen(tiny_model, gpt2_tokenizer, ["Hi"], batch_size=0)
    with pytest.raises(ValueError, match="tokenize to nothing"):
        gen(tiny_model, gpt2_tokenizer, ["Hi", ""])
