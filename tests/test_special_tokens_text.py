"""A row's characters are always text (issue 9 item 13): a literal special-token string in the data is
tokenized with special-token splitting, in data preparation, eval prompts, on-policy re-encoding and the
spans CLI; the only special tokens are the ones the encoder/template adds. Real GPT-2 and Qwen tokenizers."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from distillkit.data.encode import encode, prompt_frame, strip_eos, tokenize_text
from distillkit.data.template import format_prompt

# a Dolly-style row whose answer quotes GPT-2/Qwen's control strings literally
ROW = {
    "instruction": "What marks the end of a document for GPT-2?",
    "input": "",
    "output": "It is the token <|endoftext|>; Qwen also has <|im_start|> and <|im_end|>.",
}


def special_strings(tok) -> list[str]:
    return [s for s in tok.all_special_tokens if s in ROW["output"] or s in "<|im_start|><|im_end|>"]


@pytest.mark.parametrize("name", ["gpt2", "qwen"])
def test_dolly_row_with_endoftext_is_all_text(name, gpt2_tokenizer, qwen_tokenizer):
    tok = gpt2_tokenizer if name == "gpt2" else qwen_tokenizer
    prompt, response = format_prompt(ROW), ROW["output"]
    enc = encode(tok, prompt, response)
    eos = tok.eos_token_id
    n_prompt = enc.prompt_len
    response_ids = enc.input_ids[n_prompt:-1]
    # the literal string is in the text, and a plain tokenizer call would turn it into the EOS id
    assert eos in tok(response, add_special_tokens=False)["input_ids"]
    # ... but here no EOS (nor any other special id) inside the response: only the appended one, at the end
    specials = set(tok.all_special_ids)
    assert not specials & set(response_ids)
    assert enc.input_ids[-1] == eos and enc.input_ids.count(eos) == 1
    assert [lab for lab in enc.labels if lab == eos] == [eos]  # one EOS target: the real end
    # the response tokens decode back to exactly the text, and their offsets tile it
    assert tok.decode(response_ids) == response
    shift = len(prompt)
    offsets = enc.offsets[n_prompt:-1]
    assert offsets[0][0] == shift and offsets[-1][1] == shift + len(response)
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))
    assert all(enc.valid[n_prompt:-1]) and not enc.valid[-1]
    # the labels predict the response then the EOS, from the last prompt token on
    assert enc.labels[n_prompt - 1 : -1] == response_ids + [eos]


def test_literal_bos_in_text_is_text_and_the_tokenizer_bos_is_kept(tmp_path):
    """A tokenizer that adds a BOS (the project's Unigram, like Llama's): the BOS stays, a literal "<s>" in
    the text is not it."""
    import distillkit.config  # noqa: F401  (the package's import order: config before models.pair)
    from distillkit.models.pair import load_tokenizer
    from distillkit.models.tokenizers import cached_tiny_tokenizer

    tok = load_tokenizer(str(cached_tiny_tokenizer("unigram", 512, cache_root=tmp_path)), "teacher")
    bos = tok.bos_token_id
    assert tok("a", add_special_tokens=True)["input_ids"][0] == bos
    enc = encode(tok, "Say <s> here: ", "then </s> and <s>.")
    assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1
    assert enc.input_ids.count(tok.eos_token_id) == 1 and enc.input_ids[-1] == tok.eos_token_id
    assert enc.valid[0] is False and all(enc.valid[1:-1])
    assert not set(enc.input_ids[1:-1]) & set(tok.all_special_ids)  # the model's "<s>" piece respelled
    response_ids = enc.input_ids[enc.prompt_len : -1]
    assert tok.decode(response_ids) == "then </s> and <s>."
    offsets = enc.offsets[enc.prompt_len : -1]
    text = "Say <s> here: then </s> and <s>."
    assert "".join(text[a:b] for a, b in offsets) == "then </s> and <s>."  # offsets tile the response


def test_chat_template_keeps_its_control_tokens_and_splits_the_content(qwen_tokenizer):
    tok = qwen_tokenizer
    row = {"instruction": "Repeat: <|im_start|> and <|endoftext|>", "input": ""}
    prompt = format_prompt(row, "chat", tok)
    frame = prompt_frame("chat", tok)
    assert frame is not None and frame.split(prompt) is not None
    got = tokenize_text(tok, prompt, frame=frame)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    # the template writes <|im_start|> twice (user, assistant); the content's literal one is text
    assert got.ids.count(im_start) == prompt.count("<|im_start|>") - 1 == 2
    assert tok.eos_token_id not in got.ids
    assert tok.decode(got.ids) == prompt
    assert [got.ids[i] for i, s in enumerate(got.special) if s] == [
        i for i in got.ids if i in set(tok.all_special_ids)
    ]
    # without the frame every character is text (the minillm/none templates)
    plain = tokenize_text(tok, prompt)
    assert im_start not in plain.ids and not any(plain.special)
    # and encode() marks the template's control tokens as special (never in a span)
    enc = encode(tok, prompt, "ok", frame)
    assert [i for i, v in zip(enc.input_ids, enc.valid) if not v].count(im_start) == 2
    assert prompt_frame("minillm", tok) is None and prompt_frame("none", tok) is None


def test_strip_eos():
    from distillkit.data.encode import Encoded

    enc = Encoded(
        [5, 6, 7, 8, 0],
        [-100, 7, 8, 0, -100],
        [(0, 1), (1, 2), (2, 3), (3, 4), (0, 0)],
        [True] * 4 + [False],
        2,
    )
    out = strip_eos(enc)
    assert out.input_ids == [5, 6, 7, 8] and out.labels == [-100, 7, 8, -100] and out.valid == [True] * 4
    with pytest.raises(ValueError, match="does not end with an appended EOS"):
        strip_eos(out)


def test_eval_prompts_are_text(gpt2_tokenizer):
    from distillkit.eval.generate import encode_prompts

    prompt = "Quote <|endoftext|> please.\n"
    (ids,) = encode_prompts(gpt2_tokenizer, [prompt])
    assert gpt2_tokenizer.eos_token_id not in ids and gpt2_tokenizer.decode(ids) == prompt
    assert ids == tokenize_text(gpt2_tokenizer, prompt).ids


def test_datamodule_and_onpolicy_encoding_treat_text_the_same(gpt2_tokenizer, qwen_tokenizer):
    """The data module (and through make_examples, the on-policy re-encoding) on a cross-tokenizer pair."""
    from distillkit.data.datamodule import DistillDataModule

    cfg = OmegaConf.create(
        {"batch_size": 2, "max_prompt_tokens": 256, "max_total_tokens": 512, "template": "minillm"}
    )
    dm = DistillDataModule(cfg, gpt2_tokenizer, qwen_tokenizer, shared_tokenizer=False)
    (ex,) = dm.make_examples([format_prompt(ROW)], [ROW["output"]])
    for side, tok in ((ex.student, gpt2_tokenizer), (ex.teacher, qwen_tokenizer)):
        assert side.input_ids.count(tok.eos_token_id) == 1 and side.input_ids[-1] == tok.eos_token_id
        assert tok.decode(side.input_ids[side.prompt_len : -1]) == ROW["output"]


def test_spans_cli_aligns_a_literal_special_string(capsys, data_root):
    from distillkit.spans.__main__ import main

    gpt2, qwen = str(data_root / "tokenizers" / "gpt2"), str(data_root / "tokenizers" / "qwen2")
    text = "End with <|endoftext|> now."
    assert main(["align", "--text", text, "--tokenizer", gpt2, "--tokenizer", qwen, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    # every character is covered by an aligned group: no token was dropped as special
    assert "".join(g["text"] for g in groups) == text
    assert groups[0]["start"] == 0 and groups[-1]["end"] == len(text)
    strings = [s for g in groups for s in g["token_strings"]["gpt2"]]
    assert "<|endoftext|>" not in strings
