"""The benchmark helpers (benchmarks/common.py) and a smoke run of the span benchmark."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_pair, kd_step, make_batch, time_fn  # noqa: E402


def tiny_gpt2(layers: int, dim: int, vocab: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(layers)
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    config = GPT2Config(vocab_size=vocab, n_positions=16, n_embd=dim, n_layer=layers, n_head=2, **no_dropout)
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def pair():
    teacher = tiny_gpt2(2, 32).eval().requires_grad_(False)
    return teacher, tiny_gpt2(1, 16).train()


@pytest.mark.slow
def test_bench_pair_shapes_and_frozen_teacher():
    teacher, student = bench_pair(vocab=64)
    t, s = teacher.config, student.config
    assert (t.n_layer, t.n_embd, t.n_head, t.n_positions, t.vocab_size) == (8, 512, 8, 512, 64)
    assert (s.n_layer, s.n_embd, s.n_head, s.n_positions, s.vocab_size) == (4, 256, 4, 512, 64)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(p.requires_grad for p in student.parameters())


def test_make_batch_is_seeded():
    a, b, c = make_batch(2, 8, 50, seed=1), make_batch(2, 8, 50, seed=1), make_batch(2, 8, 50, seed=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    assert (
        a["input_ids"].shape == (2, 8) and int(a["input_ids"].max()) < 50 and bool(a["attention_mask"].all())
    )


def test_kd_step_loss_is_the_forward_kl(pair):
    teacher, student = pair
    batch = make_batch(2, 6, 64)
    twin = copy.deepcopy(teacher).requires_grad_(True)  # eval mode: no dropout, same outputs
    assert kd_step(teacher, twin, batch, torch.optim.SGD(twin.parameters(), lr=0.0)) == pytest.approx(
        0.0, abs=1e-6
    )

    with torch.no_grad():
        p = torch.log_softmax(teacher(**batch).logits.double(), -1)
        q = torch.log_softmax(student(**batch).logits.double(), -1)
    expected = float((p.exp() * (p - q)).sum(-1).mean())
    before = [w.detach().clone() for w in student.parameters()]
    loss = kd_step(teacher, student, batch, torch.optim.SGD(student.parameters(), lr=0.1))
    assert loss == pytest.approx(expected, rel=1e-4)
    assert any(not torch.equal(b, a) for b, a in zip(before, student.parameters()))


def test_time_fn_is_the_median_and_runs_warmup():
    calls = []
    durations = iter([0.0, 0.0, 0.03, 0.001, 0.01])

    def fn():
        import time

        calls.append(1)
        time.sleep(next(durations))

    t = time_fn(fn, warmup=2, repeat=3)
    assert len(calls) == 5
    assert 0.01 <= t < 0.03 and not math.isnan(t)


@pytest.mark.bench
@pytest.mark.slow
def test_bench_spans_quick_smoke(data_root, monkeypatch, tmp_path):
    import benchmarks.bench_spans as bench

    monkeypatch.setenv("DISTILLKIT_DATA_ROOT", str(data_root))
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    results = bench.main(["--quick"])
    assert results["parse"]["cached_s"] > 0 and results["pooling"][0]["ratio"] > 0
    assert (tmp_path / "spans.json").is_file()
