"""SeqKD: the teacher's responses are generated once in data preparation, cached, resumable, and the
student trains with CE on them (its own tokenizer, any pair)."""

from __future__ import annotations

import types

import pytest
import torch

from distillkit.data.teacher_generated import teacher_generated_rows
from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [{"instruction": f"Name a colour number {i}.", "input": "", "output": f"gold {i}"} for i in range(5)]
DATA = types.SimpleNamespace(template="none")


def fake_teacher():
    model = torch.nn.Linear(2, 2)
    model.config = types.SimpleNamespace(name_or_path="fake", to_dict=lambda: {"d": 2})
    return types.SimpleNamespace(model=model, tokenizer=None)


def test_generations_replace_train_outputs_are_cached_and_resume_by_shard(tmp_path):
    calls = []

    def generate(model, tokenizer, prompts, **sampling):
        calls.append(list(prompts))
        return [f"teacher says {p.split()[-1]}" for p in prompts]

    teacher = fake_teacher()
    sampling = {"seed": 10, "top_k": 0}
    transform = teacher_generated_rows(
        teacher, sampling=sampling, cache_root=str(tmp_path), shard_size=2, generate=generate
    )
    rows = transform("train", ROWS, DATA)
    assert [r["output"] for r in rows] == [f"teacher says {i}." for i in range(5)]
    assert [r["instruction"] for r in rows] == [r["instruction"] for r in ROWS]
    assert transform("dev", ROWS, DATA) == ROWS  # only the train split is generated
    assert [len(c) for c in calls] == [2, 2, 1]
    shards = sorted((tmp_path / "seqkd").glob("*/shard-*.jsonl"))
    assert len(shards) == 3

    def boom(*a, **k):
        raise AssertionError("generated again")

    again = teacher_generated_rows(
        teacher, sampling=sampling, cache_root=str(tmp_path), shard_size=2, generate=boom
    )
    assert again("train", ROWS, DATA) == rows  # read from the cache
    shards[1].unlink()  # an interrupted generation: only the missing shard is generated
    calls.clear()
    resumed = teacher_generated_rows(
        teacher, sampling=sampling, cache_root=str(tmp_path), shard_size=2, generate=generate
    )
    assert resumed("train", ROWS, DATA) == rows and [len(c) for c in calls] == [2]
    other = teacher_generated_rows(
        teacher, sampling={"seed": 11, "top_k": 0}, cache_root=str(tmp_path), shard_size=2, generate=generate
    )
    other("train", ROWS, DATA)
    entries = [d for d in (tmp_path / "seqkd").iterdir() if d.is_dir()]
    assert len(entries) == 2  # other sampling settings: another cache entry


@pytest.mark.parametrize("pair", ["tiny", "tiny-xtok"])
def test_seqkd_trains_the_student_on_the_teachers_texts_with_no_teacher_forward(pair, tmp_path):
    cfg = compose_cfg(
        SMALL
        + [
            "method=seqkd",
            f"model={pair}",
            "callbacks=none",
            "trainer.max_steps=1",
            "data.synthetic.n_train=8",
            "method.max_prompt_tokens=64",
            "method.max_total_tokens=96",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    dm, module = out["datamodule"], out["module"]
    texts = [ex.text for ex in dm.examples["train"]]
    assert module.teacher is None and out["method"].teacher_needs is None  # no teacher in the step
    assert "train/ce" in out["metrics"] and len(texts) > 0
    from distillkit.data.synthetic import synthetic_splits

    gold = {r["output"] for r in synthetic_splits(8, 0, 0, seed=0)["train"]}
    assert not gold & {ex.references[0] for ex in dm.examples["train"]}  # the responses are the teacher's
