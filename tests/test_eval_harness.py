"""`evaluate` over a temporary data root: two small sets and one missing set."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from distillkit.eval import EvalProtocol, evaluate, rouge_l
from distillkit.utils.io import read_jsonl

ROWS_A = [
    {"prompt": "Question: name a colour.\nAnswer:", "output": "red"},
    {"prompt": "Question: say hello.\nAnswer:", "output": ["hello", "hi there"]},
    {"prompt": "Question: count to three.\nAnswer:", "output": "one two three"},
]
ROWS_B = [  # no prompt field: the MiniLLM template is applied
    {"instruction": "Give a fruit.", "input": "", "output": "apple"},
    {"instruction": "Translate", "input": "bonjour", "output": "hello"},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(gpt2_tokenizer):
    torch.manual_seed(7)
    return GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=256, vocab_size=len(gpt2_tokenizer))
    )


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    for rel, rows in (("a/valid.jsonl", ROWS_A), ("b/valid.jsonl", ROWS_B)):
        (data / rel).parent.mkdir(parents=True)
        (data / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def protocol(**kw):
    args = dict(
        name="tiny",
        sets={"a": "a/valid.jsonl", "b": "b/valid.jsonl", "c": "c/valid.jsonl"},
        seeds=[1, 2],
        max_prompt_tokens=64,
        max_total_tokens=80,
        batch_size=2,
    )
    args.update(kw)
    return EvalProtocol(**args)


def test_missing_set_reported_and_excluded_from_avg(tiny_model, gpt2_tokenizer, root, tmp_path):
    logs = []
    out = tmp_path / "run"
    res = evaluate(tiny_model, gpt2_tokenizer, protocol(), root, out, log=logs.append)

    assert res["protocol"] == "tiny"
    assert list(res["sets"]) == ["a", "b", "c"]
    assert res["sets"]["c"] == {"path": "c/valid.jsonl", "missing": True, "reason": "file not found"}
    assert res["missing_sets"] == ["c"]
    assert any("MISSING" in line for line in logs)

    for name, rows in (("a", ROWS_A), ("b", ROWS_B)):
        entry = res["sets"][name]
        assert entry["missing"] is False and entry["n_prompts"] == len(rows)
        assert set(entry["seeds"]) == {"1", "2"}
        # recompute every figure from the predictions file, independently of the harness
        preds = read_jsonl(out / "predictions" / f"{name}.jsonl")
        assert len(preds) == 2 * len(rows)
        for seed in (1, 2):
            lines = [p for p in preds if p["seed"] == seed]
            assert [p["index"] for p in lines] == list(range(len(rows)))
            rescored = [rouge_l(p["generation"], p["references"]) for p in lines]
            assert [p["score"] for p in lines] == pytest.approx(rescored)
            assert entry["seeds"][str(seed)] == pytest.approx(np.mean(rescored))
        per_seed = [entry["seeds"]["1"], entry["seeds"]["2"]]
        assert entry["mean"] == pytest.approx(np.mean(per_seed))
        assert entry["std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert entry["std_over"] == "generation_seeds" and entry["n_seeds"] == 2
    assert res["avg"] == pytest.approx((res["sets"]["a"]["mean"] + res["sets"]["b"]["mean"]) / 2)

    preds_b = read_jsonl(out / "predictions" / "b.jsonl")
    assert preds_b[0]["prompt"].endswith("### Instruction:\nGive a fruit.\n\n### Response:\n")
    assert preds_b[1]["references"] == ["hello"]
    assert read_jsonl(out / "predictions" / "a.jsonl")[1]["references"] == ["hello", "hi there"]
    assert not (out / "predictions" / "c.jsonl").exists()
    json.dumps(res)  # the result is JSON-serialisable as it stands


def test_perfect_model_scores_100(gpt2_tokenizer, root, monkeypatch):
    """Scores come from the references: a model that answers the reference scores 100."""
    import distillkit.eval.harness as harness

    answers = {r["prompt"]: r["output"] if isinstance(r["output"], str) else r["output"][1] for r in ROWS_A}
    monkeypatch.setattr(
        harness, "generate_responses", lambda m, t, prompts, **kw: [answers[p] for p in prompts]
    )
    res = evaluate(
        None, gpt2_tokenizer, protocol(sets={"a": "a/valid.jsonl"}, seeds=[1]), root, None, log=None
    )
    assert res["sets"]["a"]["seeds"] == {"1": pytest.approx(100.0)}
    assert res["sets"]["a"]["std"] == 0.0 and res["sets"]["a"]["n_seeds"] == 1  # one generation seed
    assert res["avg"] == pytest.approx(100.0) and res["missing_sets"] == []


def test_max_prompts_and_set_override(tiny_model, gpt2_tokenizer, root):
    res = evaluate(
        tiny_model,
        gpt2_tokenizer,
        protocol(seeds=[1], max_prompts=2),
        root,
        None,
        log=None,
        sets={"a": "a/valid.jsonl"},
    )
    assert list(res["sets"]) == ["a"] and res["sets"]["a"]["n_prompts"] == 2


def test_all_missing_gives_no_average(gpt2_tokenizer, root):
    res = evaluate(None, gpt2_tokenizer, protocol(sets={"x": "x.jsonl"}), root, None, log=None)
    assert res["avg"] is None and res["missing_sets"] == ["x"]


def test_bad_inputs_fail_before_generation(gpt2_tokenizer, root, tmp_path):
    with pytest.raises(FileNotFoundError, match="data root"):
        evaluate(None, gpt2_tokenizer, protocol(), tmp_path / "nowhere", None)
    (root / "bad.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="no reference"):
        evaluate(None, gpt2_tokenizer, protocol(sets={"a": "a/valid.jsonl", "bad": "bad.jsonl"}), root, None)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(None, gpt2_tokenizer, None, root, None)


def test_std_is_sample_std_over_seeds():
    from distillkit.eval.harness import _mean_std

    values = [10.0, 12.0, 17.0]
    mean, std = _mean_std(values)
    assert mean == pytest.approx(13.0)
    assert std == pytest.approx(((9 + 1 + 16) / 2) ** 0.5)
    assert statistics.stdev(values) == pytest.approx(std)
