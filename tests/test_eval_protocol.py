"""Evaluation protocols: the YAMLs say what papers.md §5 says, Hydra composes them, bad values fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from distillkit.data.template import format_prompt
from distillkit.eval.protocol import (
    EvalProtocol,
    available_protocols,
    load_protocol,
    protocol_from_config,
    row_prompt,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
DSKD_SETS = {
    "dolly": "dolly/valid.jsonl",
    "self-inst": "self-inst/valid.jsonl",
    "vicuna": "vicuna/valid.jsonl",
    "sinst": "sinst/11_/valid.jsonl",
    "uinst": "uinst/11_/valid.jsonl",
}


def test_all_protocols_listed():
    assert set(available_protocols()) >= {"dskd", "mta", "sra", "smoke", "dev", "none"}


def test_dskd_protocol_is_the_papers():
    p = load_protocol("dskd")
    assert p.sets == DSKD_SETS
    assert p.seeds == [10, 20, 30, 40, 50]
    assert (p.do_sample, p.top_k, p.top_p, p.temperature) == (True, 0, 1.0, 1.0)
    assert p.no_repeat_ngram_size == 6
    assert (p.max_prompt_tokens, p.max_total_tokens, p.max_new_tokens, p.stop) == (256, 512, None, None)
    assert p.new_token_budget() == 512 - 256


def test_mta_protocol_is_its_eval_package():
    p = load_protocol("mta")
    assert p.sets == {k: v for k, v in DSKD_SETS.items() if k != "uinst"}
    assert p.seeds == [10, 20, 30, 40, 50]
    assert p.stop == "###" and p.no_repeat_ngram_size == 0
    assert p.new_token_budget() == 384 and p.max_prompt_tokens == 256


def test_smoke_and_dev_are_small():
    smoke = load_protocol("smoke")
    assert smoke.sets == DSKD_SETS and smoke.max_prompts == 50 and len(smoke.seeds) == 1
    assert smoke.new_token_budget() <= 64
    dev = load_protocol("dev")
    assert list(dev.sets) == ["dev"] and dev.sets["dev"] == "dolly/dev.jsonl"  # the fallback outside a run
    assert len(dev.seeds) == 1 and dev.max_prompts <= 200
    assert load_protocol("none") is None


def test_unknown_protocol_lists_choices():
    with pytest.raises(ValueError, match="valid: .*dskd"):
        load_protocol("dksd")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=["model_path=x", *overrides])


def test_hydra_compose_and_instantiate_every_protocol():
    for name in ("dskd", "mta", "sra", "smoke"):
        cfg = _compose([f"eval={name}"])
        p = instantiate(cfg.eval)
        assert isinstance(p, EvalProtocol) and p == load_protocol(name)
        assert isinstance(p.sets, dict) and isinstance(p.seeds, list)


def test_dev_protocol_takes_the_run_config_dev_path():
    cfg = _compose(["eval=dev", "+data.dev=mydata/dev.jsonl"])
    assert instantiate(cfg.eval).sets == {"dev": "mydata/dev.jsonl"}
    assert protocol_from_config(cfg.eval).sets == {"dev": "mydata/dev.jsonl"}


def test_eval_none_composes_to_null():
    cfg = _compose(["eval=none"])
    assert cfg.eval is None
    assert protocol_from_config(cfg.eval) is None


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("top_p", 0.0, "top_p"),
        ("top_k", -1, "top_k"),
        ("temperature", 0.0, "temperature"),
        ("template", "alpaca", "valid: minillm"),
        ("seeds", [], "seeds"),
        ("sets", {}, "sets"),
        ("max_total_tokens", 256, "max_total_tokens"),
        ("max_prompts", 0, "max_prompts"),
        ("stop", "", "stop"),
    ],
)
def test_bad_values_fail_with_the_field_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        load_protocol("dskd").replace(**{field: value})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="valid: .*max_prompts"):
        protocol_from_config({"name": "x", "sets": {"a": "a.jsonl"}, "seeds": [1], "max_prompt": 10})


def test_no_length_limit_is_rejected():
    with pytest.raises(ValueError, match="max_total_tokens or max_new_tokens"):
        EvalProtocol(name="x", sets={"a": "a.jsonl"}, seeds=[1], max_total_tokens=None, max_new_tokens=None)


def test_budget_is_the_tighter_limit():
    p = EvalProtocol(name="x", sets={"a": "a.jsonl"}, seeds=[1], max_prompt_tokens=100, max_total_tokens=300)
    assert p.new_token_budget() == 200
    assert p.replace(max_new_tokens=50).new_token_budget() == 50
    assert p.replace(max_new_tokens=500).new_token_budget() == 200


def test_row_prompt_prefers_the_prompt_field():
    row = {"instruction": "Say hi", "input": "", "output": "hi"}
    assert row_prompt(row) == format_prompt(row, "minillm")
    assert "### Instruction:\nSay hi" in row_prompt(row)
    assert row_prompt({**row, "prompt": "P: "}) == "P: "


@pytest.mark.parametrize("name", ["dev", "dskd", "mta", "smoke"])
def test_every_protocol_follows_the_training_template_by_default(name):
    """No YAML names a template: a run evaluates on the one it trained with (data.template)."""
    from tests.helpers import compose_cfg

    assert load_protocol(name).template is None
    assert compose_cfg([f"eval={name}", "data.template=chat"]).eval.template is None


def test_resolve_template_prefers_eval_then_the_training_data_then_minillm():
    from distillkit.eval.protocol import resolve_template

    p = load_protocol("dskd")
    assert resolve_template(p, "none", "data.template") == ("none", "data.template")
    assert resolve_template(p.replace(template="chat"), "none", "data.template") == ("chat", "eval.template")
    assert resolve_template(p) == ("minillm", "default")
    with pytest.raises(ValueError, match="valid: minillm, chat, none"):
        resolve_template(p, "alpaca", "data.template")
