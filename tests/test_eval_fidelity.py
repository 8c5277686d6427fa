"""The evaluators as their authors run them (issue 9 items 10-12): eval=mta (voluyen/eval_mta
src/evaluator.py), eval=sra (wind123mountain/SRE evaluator.py), eval=dskd's UnNI cap (DSKD
scripts/eval/run_eval.sh DATA_NUM=10000); decoding settings, reference handling, caps and stop rules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from rouge_score import rouge_scorer

from distillkit.eval import EvalProtocol, evaluate, load_protocol
from distillkit.eval.generate import _StopOnToken, generate_responses, stop_token_id


# ----------------------------------------------------------------------------- the protocols as data
def test_mta_protocol_is_its_evaluator():
    p = load_protocol("mta")
    assert list(p.sets) == ["dolly", "self-inst", "vicuna", "sinst"]  # no UnNI
    assert p.seeds == [10, 20, 30, 40, 50]
    # generate(do_sample=True, temperature=1.0, top_p=1.0) and no top_k: HF's default 50
    assert (p.do_sample, p.temperature, p.top_p, p.top_k) == (True, 1.0, 1.0, 50)
    assert p.no_repeat_ngram_size == 0 and p.max_new_tokens == 384 and p.max_total_tokens is None
    assert p.max_prompt_tokens == 256
    assert p.references == "first"  # preprocess_test: responses[i][0]
    assert p.add_special_tokens is True  # tokenizer(prompts, ...) with its defaults: a BOS for OPT/Llama
    assert (p.stop, p.stop_rule, p.keep_stop) == ("###", "token", True)


def test_sra_protocol_is_its_evaluator():
    p = load_protocol("sra")
    assert list(p.sets) == ["dolly", "self-inst", "vicuna", "sinst"]
    assert p.sets["sinst"] == "sinst/11_/valid.jsonl"
    assert p.seeds == [10, 20, 30, 40, 50]
    assert (p.do_sample, p.temperature, p.top_p, p.top_k) == (True, 1.0, 1.0, 50)
    assert p.max_new_tokens == 512 and p.max_total_tokens is None and p.max_prompt_tokens == 256
    assert p.no_repeat_ngram_size == 0 and p.stop is None
    assert p.references == "first" and p.add_special_tokens is True


def test_dskd_protocol_keeps_its_choices_and_caps_unni():
    p = load_protocol("dskd")
    assert (p.top_k, p.no_repeat_ngram_size, p.references, p.add_special_tokens) == (0, 6, "all", False)
    assert p.set_max_prompts == {"uinst": 10000}
    assert p.prompt_cap("uinst") == 10000 and p.prompt_cap("dolly") is None
    assert p.replace(max_prompts=50).prompt_cap("uinst") == 50  # the tighter cap wins


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("references", "best", "references='best'; valid: all, first"),
        ("stop_rule", "regex", "stop_rule='regex'; valid: string, token"),
        ("keep_stop", "yes", "keep_stop='yes'; must be true or false"),
        ("set_max_prompts", {"uinst": 0}, r"set_max_prompts.uinst=0; must be an integer >= 1"),
        (
            "set_max_prompts",
            {"unist": 10},
            r"set_max_prompts names sets \['unist'\].*valid: dolly, self-inst",
        ),
    ],
)
def test_bad_values_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        load_protocol("dskd", **{field: value})


# ----------------------------------------------------------------------------- the UnNI cap
def test_dskd_evaluates_the_first_10000_unni_prompts(tmp_path, gpt2_tokenizer, monkeypatch):
    import distillkit.eval.harness as harness

    n_rows = 10_007
    path = tmp_path / "uinst" / "11_" / "valid.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(
        "".join(json.dumps({"prompt": f"Q{i}:", "output": f"a{i}"}) + "\n" for i in range(n_rows))
    )
    seen = []

    def fake(model, tok, prompts, **kw):
        seen.append(list(prompts))
        return ["x"] * len(prompts)

    monkeypatch.setattr(harness, "generate_responses", fake)
    protocol = load_protocol("dskd", seeds=[10])
    res = evaluate(
        None, gpt2_tokenizer, protocol, tmp_path, None, log=None, sets={"uinst": "uinst/11_/valid.jsonl"}
    )
    assert res["sets"]["uinst"]["n_prompts"] == 10_000 and res["sets"]["uinst"]["prompt_cap"] == 10_000
    assert seen == [[f"Q{i}:" for i in range(10_000)]]  # the FIRST 10,000, as DSKD's data[:DATA_NUM]
    # a set override without uinst drops its cap (no error), other sets are not capped
    other = tmp_path / "dolly" / "valid.jsonl"
    other.parent.mkdir()
    other.write_text("".join(json.dumps({"prompt": f"D{i}:", "output": "b"}) + "\n" for i in range(10_003)))
    res = evaluate(
        None, gpt2_tokenizer, protocol, tmp_path, None, log=None, sets={"dolly": "dolly/valid.jsonl"}
    )
    assert res["sets"]["dolly"]["n_prompts"] == 10_003


# ----------------------------------------------------------------------------- references
def test_first_reference_only_vs_max_over_references(tmp_path, gpt2_tokenizer, monkeypatch):
    import distillkit.eval.harness as harness

    rows = [
        {"prompt": "P1:", "output": ["the red fox jumps", "a small blue bird sings"]},
        {"prompt": "P2:", "output": ["one two three", "four five six"]},
    ]
    path = tmp_path / "s" / "valid.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    generation = {"P1:": "a small blue bird sings", "P2:": "one two six"}
    monkeypatch.setattr(
        harness, "generate_responses", lambda m, t, prompts, **kw: [generation[p] for p in prompts]
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def f1(ref, pred):
        return 100 * scorer.score(ref, pred)["rougeL"].fmeasure

    base = dict(name="t", sets={"s": "s/valid.jsonl"}, seeds=[1], max_new_tokens=8, max_total_tokens=None)
    every = evaluate(None, gpt2_tokenizer, EvalProtocol(**base), tmp_path, None, log=None)
    first = evaluate(None, gpt2_tokenizer, EvalProtocol(**base, references="first"), tmp_path, None, log=None)
    exp_every = (
        max(f1(r, generation["P1:"]) for r in rows[0]["output"])
        + max(f1(r, "one two six") for r in rows[1]["output"])
    ) / 2
    exp_first = (f1(rows[0]["output"][0], generation["P1:"]) + f1(rows[1]["output"][0], "one two six")) / 2
    assert every["sets"]["s"]["mean"] == pytest.approx(exp_every)
    assert first["sets"]["s"]["mean"] == pytest.approx(exp_first)
    assert exp_first < exp_every  # the test tells the two apart


# ----------------------------------------------------------------------------- decoding
class ScriptedLM(torch.nn.Module):
    """``generate`` appends scripted tokens one step at a time, applying the stopping criteria per
    sequence as HF does (a stopped sequence is padded), and records the generation config."""

    def __init__(self, script: list[list[int]], pad: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.pad, self.calls = script, pad, []

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria=None):
        self.calls.append(SimpleNamespace(input_ids=input_ids.clone(), config=generation_config))
        rows = input_ids.shape[0]
        done = torch.zeros(rows, dtype=torch.bool)
        ids = input_ids
        for step in range(max(len(s) for s in self.script)):
            nxt = torch.tensor([s[step] if step < len(s) else self.pad for s in self.script[:rows]])
            nxt = torch.where(done, torch.full_like(nxt, self.pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            if stopping_criteria is not None:
                done |= stopping_criteria(ids, None)
            if bool(done.all()):
                break
        return ids


def test_mta_decoding_settings_reach_generate_and_keep_the_stop(gpt2_tokenizer):
    tok = gpt2_tokenizer
    p = load_protocol("mta")
    a = tok("Answer one.\n\n", add_special_tokens=False)["input_ids"] + [stop_token_id(tok, "###")]
    a += tok(" Instruction: more", add_special_tokens=False)["input_ids"]
    b = tok("Answer two ### goes on", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model = ScriptedLM([a, b], pad=tok.eos_token_id)
    kw = p.generation_kwargs()
    out = generate_responses(model, tok, ["Q1 long prompt here:", "Q2:"], seed=10, **kw)
    cfg = model.calls[0].config
    assert (cfg.do_sample, cfg.top_k, cfg.top_p, cfg.temperature) == (True, 50, 1.0, 1.0)
    assert cfg.max_new_tokens == 384 and cfg.no_repeat_ngram_size == 0
    # per sequence: the first stops at its "###" token and keeps it; the second's " ###" is another
    # token (Ġ###), so the token rule lets it run to its EOS (the whole text scored, as the reference)
    assert out == ["Answer one.\n\n###", "Answer two ### goes on"]
    # distillkit's earlier choice: the string rule and the stop cut away
    model = ScriptedLM([a, b], pad=tok.eos_token_id)
    old = generate_responses(
        model,
        tok,
        ["Q1 long prompt here:", "Q2:"],
        seed=10,
        **{**kw, "stop_rule": "string", "keep_stop": False},
    )
    assert old == ["Answer one.", "Answer two"]


def test_token_stop_is_per_sequence_not_the_first_row():
    stop = 7
    ids = torch.tensor([[1, 2, 3], [1, 2, stop], [1, stop, 3]])
    assert _StopOnToken(stop)(ids, None).tolist() == [False, True, False]


def test_add_special_tokens_puts_the_bos_first(tmp_path):
    """The MTA/SRA evaluators tokenize prompts with the tokenizer's defaults (a BOS for OPT/Llama)."""
    import distillkit.config  # noqa: F401  (the package's import order)
    from distillkit.models.pair import load_tokenizer
    from distillkit.models.tokenizers import cached_tiny_tokenizer

    tok = load_tokenizer(str(cached_tiny_tokenizer("unigram", 512, cache_root=tmp_path)), "teacher")
    for flag in (True, False):
        model = ScriptedLM([[tok.eos_token_id]], pad=tok.pad_token_id)
        generate_responses(
            model, tok, ["Name a fruit."], max_new_tokens=4, max_total_tokens=None, add_special_tokens=flag
        )
        row = model.calls[0].input_ids[0].tolist()
        assert (row[0] == tok.bos_token_id) is flag and row.count(tok.bos_token_id) == int(flag)


# ----------------------------------------------------------------------------- checkpoint selection
def test_dev_rouge_never_selects_on_test_unless_the_unsafe_key(caplog):
    from distillkit.callbacks.dev_eval import DevRouge

    rows = {
        "dev": [{"prompt": "d:", "output": "dev answer"}],
        "test": [{"prompt": "t:", "output": "test answer"}],
    }
    scored = []

    class Probe(DevRouge):
        def score(self, model, tokenizer, rows, data_cfg):
            scored.append([r["prompt"] for r in rows])
            return 1.0

    module = SimpleNamespace(student=None, student_tokenizer=None, log=lambda *a, **k: None)
    trainer = SimpleNamespace(sanity_checking=False, datamodule=SimpleNamespace(rows=rows, cfg=None))
    Probe().on_validation_epoch_end(trainer, module)
    assert scored == [["d:"]]  # the default: the dev split
    with caplog.at_level("WARNING"):
        unsafe = Probe(select_on_test_split_UNSAFE=True)
    assert "UNSAFE" in caplog.text and "TEST split" in caplog.text
    unsafe.on_validation_epoch_end(trainer, module)
    assert scored[-1] == ["t:"]
    trainer.datamodule.rows = {"dev": rows["dev"]}
    with pytest.raises(ValueError, match="no test split"):
        unsafe.on_validation_epoch_end(trainer, module)
    with pytest.raises(ValueError, match="select_on_test_split_UNSAFE='yes'"):
        DevRouge(select_on_test_split_UNSAFE="yes")


def test_default_callbacks_select_on_dev():
    from omegaconf import OmegaConf

    from distillkit.eval.protocol import CONF_EVAL_DIR

    cfg = OmegaConf.load(CONF_EVAL_DIR.parent / "callbacks" / "default.yaml")
    assert cfg.dev_rouge.select_on_test_split_UNSAFE is False
