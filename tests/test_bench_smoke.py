"""The method benchmark in its tiny shape, so the benchmark code cannot rot (``make bench`` runs it for real).

The default-suite tests run the child code in this process (a fresh interpreter per child costs
more than the whole tiny benchmark); the ``slow`` test runs the real parent, which spawns a child
process per method, and checks the JSON it writes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_methods as bm

REPO = Path(__file__).resolve().parents[1]


def _check_method_record(record: dict, method: str) -> None:
    assert record["child"] == method and record["shape"] == "tiny"
    assert record["step_s"] > 0 and math.isfinite(record["step_s"])
    assert record["peak_rss_mb"] > 0
    assert record["torch_threads"] >= 1
    assert record["weights"]["kd"] == 1.0  # both at kd_rate 1: CE is off for both
    assert "ce" not in record["weights"]


def _check_breakdown(breakdown: dict) -> None:
    assert set(breakdown) == {"step", *bm.STEP_LABELS, *bm.MTA_LABELS}
    assert breakdown["step"] > 0
    for label in bm.STEP_LABELS + bm.MTA_LABELS:
        # every stage ran inside the profiled steps, and no stage outlasts the step it belongs to
        assert 0 < breakdown[label] <= breakdown["step"] * 1.05, label


def test_tiny_children_and_summary():
    records = {name: bm.run_child(name, "tiny", repeat=1, warmup=0) for name in ("baseline", "kd", "mta")}
    assert records["baseline"]["peak_rss_mb"] > 0 and "step_s" not in records["baseline"]
    for method in ("kd", "mta"):
        _check_method_record(records[method], method)
    mta = records["mta"]
    assert mta["weights"] == {"kd": 1.0, "dsa": 2.0, "hra": pytest.approx(0.2)}  # w_span 2, hra_factor 0.1
    shape = bm.SHAPES["tiny"]
    assert mta["pairs"] == [
        [t, s, lv] for t, s, lv in zip(shape.teacher_map, shape.student_map, ["word", "phrase"])
    ]
    _check_breakdown(mta["breakdown_s"])

    ratios = bm.summarize(records)
    assert ratios["mta_step_ratio"] == pytest.approx(mta["step_s"] / records["kd"]["step_s"])
    assert ratios["mta_memory_ratio"] == pytest.approx(mta["peak_rss_mb"] / records["kd"]["peak_rss_mb"])
    base = records["baseline"]["peak_rss_mb"]
    assert ratios["mta_memory_increment_mb"] == pytest.approx(mta["peak_rss_mb"] - base)
    json.dumps(records)  # what the child prints must be plain JSON

    # the per-method summary over rounds: ratios against kd within each round, median and range
    rounds = [records, {**records, "mta": {**mta, "step_s": 2 * mta["step_s"]}}]
    methods = bm.summarize_methods(rounds)
    assert methods["kd"]["step_ratio"] == 1.0 and methods["mta"]["rounds"] == 2
    r0 = mta["step_s"] / records["kd"]["step_s"]
    assert methods["mta"]["step_ratio_range"] == pytest.approx([r0, 2 * r0])
    assert methods["mta"]["tokens_per_s"] > 0
    failed = bm.summarize_methods([{**records, "sra": {"child": "sra", "error": "boom"}}])
    assert failed["sra"] == {"label": bm.METHODS["sra"], "error": "boom"}


def test_paired_child_alternates_and_the_summary_pools_every_pair():
    record = bm.run_paired("tiny", pairs=3, warmup=0)
    assert record["methods"] == ["kd", "mta"] and len(record["ratios"]) == 3
    for i, ratio in enumerate(record["ratios"]):  # each ratio is mta / kd of the same pair
        assert ratio == pytest.approx(record["wall_s"]["mta"][i] / record["wall_s"]["kd"][i])
    assert all(t > 0 for side in record["cpu_s"].values() for t in side)
    assert record["min_ratio"] == pytest.approx(min(record["wall_s"]["mta"]) / min(record["wall_s"]["kd"]))
    # MTA's extra work is at least its projectors' matmuls on every token, forward and backward
    # (input and weight gradients): 3 x 2 x (B*L) x Ds x Dt per mapped pair
    shape = bm.SHAPES["tiny"]
    projectors = 3 * 2 * shape.batch * shape.seq_len * shape.student_dim * shape.teacher_dim
    assert record["flops"]["mta"] - record["flops"]["kd"] >= len(shape.teacher_map) * projectors
    assert record["flop_ratio"] == pytest.approx(record["flops"]["mta"] / record["flops"]["kd"])
    json.dumps(record)
    runs = [
        {"ratios": [1.0, 1.2, 1.1], "cpu_ratios": [1.0, 1.0, 1.0], "min_ratio": 1.02, "flop_ratio": 1.05},
        {"ratios": [0.9, 1.3], "cpu_ratios": [1.1, 1.1], "min_ratio": 1.04},
        {"child": "paired", "error": "boom"},
    ]
    summary = bm.summarize_paired(runs)
    assert summary["runs"] == 2 and summary["pairs_per_run"] == [3, 2]
    assert summary["ratio"] == pytest.approx(1.1)  # the median of all five pairs, not of the run medians
    assert summary["run_medians"] == pytest.approx([1.1, 1.1]) and summary["errors"] == ["boom"]
    assert summary["min_ratios"] == [1.02, 1.04] and summary["flop_ratio"] == 1.05
    assert bm.summarize_paired([{"error": "boom"}]) is None


def test_tiny_batch_memberships_match_the_generator():
    shape = bm.SHAPES["tiny"]
    batch, stats = bm.build_batch(shape, seed=3)
    B, L = shape.batch, shape.seq_len
    side = batch.student
    assert batch.teacher is side  # one tokenizer: the teacher reads the student's view
    assert side.loss_mask[:, : shape.prompt_len].sum() == 0 and side.loss_mask.sum() == B * (
        L - shape.prompt_len - 1
    )
    for level, sizes in (("word", (2, 3)), ("phrase", (4, 8))):
        mem = batch.grids[level].student
        assert mem.seq_len == L and mem.span_mask.shape[0] == B
        # brute force: rebuild each span's token set from the flat pairs
        spans: dict[int, set[int]] = {}
        for tok, span in zip(mem.token_index.tolist(), mem.span_index.tolist()):
            assert tok // L == span // mem.num_spans  # a token pairs with a span of its own row
            spans.setdefault(span, set()).add(tok % L)
        for tokens in spans.values():
            assert max(tokens) - min(tokens) + 1 == len(tokens)  # consecutive tokens
            assert len(tokens) <= sizes[1]
            assert len(tokens) >= sizes[0] or max(tokens) == L - 1  # only the last one may be cut short
        assert len(spans) == int(mem.span_mask.sum()) == round(stats[f"{level}_spans_per_row"] * B)
    covered = torch.zeros(B * L, dtype=torch.bool)
    covered[batch.grids["word"].student.token_index] = True
    assert stats["word_token_coverage"] == pytest.approx(covered.float().mean().item())


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="method='nope'.*kd, kd_fkl, sft, mta, sra, dskd"):
        bm.method_overrides("nope", bm.SHAPES["tiny"])


@pytest.mark.slow
def test_parent_spawns_children_and_writes_json(tmp_path):
    out = tmp_path / "methods.json"
    cmd = [sys.executable, "benchmarks/bench_methods.py", "--shape", "tiny", "--repeat", "1", "--warmup", "0"]
    cmd += ["--rounds", "1"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["children"]) == set(bm.CHILDREN)  # every method ran, one child each
    for method in ("kd", "kd_fkl", "mta"):
        _check_method_record(result["children"][method], method)
    assert set(result["methods"]) == set(bm.METHODS)
    for name, m in result["methods"].items():
        assert "error" not in m, (name, m)
        assert m["step_ratio"] > 0 and m["memory_ratio"] > 0 and m["tokens_per_s"] > 0
    _check_breakdown(result["children"]["mta"]["breakdown_s"])
    assert result["targets"] == bm.TARGETS
    assert result["ratios"]["mta_step_ratio"] > 0 and result["ratios"]["mta_memory_ratio"] > 0
    assert result["ratios"]["mta_step_ratio_source"] == "paired"
    assert result["ratios"]["mta_step_ratio"] == result["paired"]["ratio"]
    assert len(result["paired_runs"]) == 3 and "paired runs" in proc.stdout
    assert "mta / kd" in proc.stdout


@pytest.mark.slow
def test_cross_tokenizer_bench_runs_children_and_writes_ratios_against_uld(tmp_path):
    out = tmp_path / "xtok.json"
    cmd = [
        sys.executable,
        "benchmarks/bench_xtok.py",
        "--shape",
        "tiny",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--methods",
        "uld",
        "sra",
        "sra_eager",
        "--out",
        str(out),
    ]
    subprocess.run(
        cmd, check=True, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1]
    )
    methods = json.loads(out.read_text())["methods"]
    assert methods["uld"]["step_ratio_vs_uld"] == 1.0
    for name in ("sra", "sra_eager"):
        assert methods[name]["step_ratio_vs_uld"] > 0 and methods[name]["memory_ratio_vs_uld"] is not None
