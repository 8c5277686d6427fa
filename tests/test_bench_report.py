"""The benchmark report, the paper-scale path's counting, and the GPU check script, all on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_paper as bp
from benchmarks import report

REPO = Path(__file__).resolve().parents[1]


def _fake_results(tmp: Path) -> None:
    methods = {}
    for name, ratio in (
        ("kd", 1.0),
        ("kd_fkl", 0.98),
        ("sft", 0.4),
        ("mta", 1.04),
        ("sra", 1.2),
        ("dskd", 1.5),
    ):
        methods[name] = {
            "label": f"L-{name}",
            "step_s": 0.5 * ratio,
            "step_ratio": ratio,
            "step_ratio_range": [ratio * 0.9, ratio * 1.1],
            "memory_ratio": ratio * 1.01,
            "tokens_per_s": 4096 / ratio,
        }
    methods["dskd"] = {"label": "L-dskd", "error": "RuntimeError: boom"}
    (tmp / "methods.json").write_text(
        json.dumps(
            {
                "shape": "bench",
                "sizes": {
                    "teacher_layers": 8,
                    "teacher_dim": 512,
                    "student_layers": 4,
                    "student_dim": 256,
                    "vocab": 8192,
                    "batch": 8,
                    "seq_len": 256,
                },
                "repeat": 3,
                "warmup": 1,
                "base": "kd",
                "rounds": [{}, {}, {}],
                "methods": methods,
                "ratios": {
                    "mta_step_ratio": 1.04,
                    "mta_memory_ratio": 1.05,
                    "mta_step_ratio_rounds": [1.0, 1.04, 1.1],
                    "mta_step_ratio_source": "paired",
                },
                "pairs": 10,
                "paired": {
                    "ratio": 1.04,
                    "run_medians": [1.03, 1.04, 1.06],
                    "cpu_ratio": 1.045,
                    "min_ratios": [1.02],
                    "flop_ratio": 1.048,
                },
                "targets": {"mta_step_ratio_max": 1.05, "mta_memory_ratio_max": 1.15},
            }
        )
    )
    xtok = {
        n: {
            "label": n.upper(),
            "step_ratio_vs_uld": r,
            "step_ratio_range": [r, r],
            "memory_ratio_vs_uld": 1.1,
            "tokens_per_s": 900.0,
            "prep_first_s": 3.0,
            "prep_cached_s": 0.5,
        }
        for n, r in (("uld", 1.0), ("mined", 1.07), ("sra", 0.95))
    }
    (tmp / "xtok.json").write_text(
        json.dumps(
            {
                "shape": "bench",
                "rounds": 3,
                "steps": 2,
                "sizes": {},
                "prep_cold_s": 40.0,
                "prep_warm_s": 5.0,
                "methods": xtok,
            }
        )
    )
    (tmp / "chunk.json").write_text(
        json.dumps(
            {
                "vocab": 151936,
                "tokens": 512,
                "chunk_size": 256,
                "device": "cpu",
                "rows": [
                    {
                        "divergence": "fkl",
                        "unchunked": {"loss_peak_mb": 2000.0},
                        "chunked": {"loss_peak_mb": 800.0},
                        "memory_ratio": 0.4,
                        "time_ratio": 1.3,
                    }
                ],
            }
        )
    )


def test_report_has_a_row_per_method_with_its_ratios(tmp_path):
    _fake_results(tmp_path)
    path = report.write_report(tmp_path, {"scale": "cpu"})
    md = path.read_text()
    assert "| L-mta | 1.04x | 0.94-1.14x | 1.05x | 3938 |" in md
    assert "| L-kd_fkl | 0.98x |" in md and "| L-sft | 0.40x |" in md and "| L-sra | 1.20x |" in md
    assert "| L-dskd | failed: RuntimeError: boom |" in md
    assert "| MINED | 1.07x | 1.07-1.07x | 1.10x | 900 | 3.0 / 0.5 |" in md
    assert "| fkl | 2000 | 800 | 0.40x | 1.30x |" in md
    assert "matmul FLOPs per step (forward + backward" in md and "the same on every machine): 1.048x" in md
    assert (
        "step 1.040x (target <= 1.05x; paired runs" in md
        and "10 ABBA pairs each; per run 1.030x, 1.040x, 1.060x" in md
    )
    assert (
        "from CPU time 1.045x; fastest step / fastest step per run 1.020x; separate processes per round 1.00x"
        in md
    )
    assert "SeqKD" in md and "## spans: no results" in md and "Paper scale" not in md
    assert "CPUs" in md and "torch" in md
    raw = json.loads((tmp_path / "report.json").read_text())
    assert raw["results"]["methods"]["methods"]["mta"]["step_ratio"] == 1.04 and raw["machine"]["cpus"] >= 1
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temp file left behind


def test_flop_per_token_against_a_hand_count():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    V, P, d, layers = 16, 8, 8, 2
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=P, n_embd=d, n_layer=layers, n_head=2))
    per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    total = V * d + P * d + layers * per_layer + 2 * d  # tied head: no extra parameters
    counts = bp.count_params(model)
    assert counts == {"total": total, "lookup": V * d + P * d, "matmul": total - V * d - P * d + V * d}
    assert bp.flop_per_token(100, 10) == 2 * 100 + 6 * 10


def test_paper_dry_run_counts_the_real_pair_on_the_meta_device():
    c = bp.meta_counts("sra")
    # Qwen1.5-1.8B: 1.84B parameters, an untied 151936 x 2048 head; GPT-2: 124.4M, tied
    assert c["teacher"]["vocab"] == 151936 and c["teacher"]["layers"] == 24 and c["teacher"]["dim"] == 2048
    assert 1.83e9 < c["teacher"]["total"] < 1.85e9
    assert c["teacher"]["matmul"] == c["teacher"]["total"] - 151936 * 2048
    assert c["student"]["vocab"] == 50257 and 124.0e6 < c["student"]["total"] < 124.8e6
    assert c["flop_per_token"] == 2 * c["teacher"]["matmul"] + 6 * c["student"]["matmul"]
    assert bp.meta_counts("kd")["student"]["vocab"] == 151936  # one vocabulary for same-tokenizer methods
    assert (
        bp.peak_tflops("NVIDIA H200", None) == 989.0
        and bp.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    )
    assert bp.peak_tflops("Unknown GPU", None) is None and bp.peak_tflops("x", 100.0) == 100.0


def test_paper_scale_refuses_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run(
        [sys.executable, "benchmarks/run_all.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "BENCH_SCALE": "paper"},
        timeout=120,
    )
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_paper_child_steps_on_the_cpu_when_shrunk():
    """The GPU child's code path (pair from conf, stand-in tokenizers, method, autocast step) on 2-layer models."""
    cmd = [
        sys.executable,
        "benchmarks/bench_paper.py",
        "--child",
        "mta",
        "--shrink",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch",
        "2",
        "--seq-len",
        "32",
        "--count-flops",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["one_vocabulary"] and record["step_s"] > 0 and record["tokens"] == 64
    # the counted matmuls include the floor's 2 N_t + 6 N_s per token, plus attention and MTA's own work
    assert record["counted_flop_per_token"] > record["flop_per_token"]


def test_paper_summary_puts_each_counted_flop_figure_over_kds():
    base = {
        "tokens": 100,
        "step_s": 1.0,
        "flop_per_token": 10,
        "peak_memory_gib": 1.0,
        "one_vocabulary": True,
    }
    records = [
        {**base, "child": "kd", "counted_flop_per_token": 200.0},
        {**base, "child": "mta", "counted_flop_per_token": 210.0},
        {**base, "child": "sft"},
    ]
    out = bp.summarize(records, peak=None)
    assert (
        out["mta"]["counted_flops_vs_kd"] == pytest.approx(1.05) and out["kd"]["counted_flops_vs_kd"] == 1.0
    )
    assert "counted_flops_vs_kd" not in out["sft"]


def test_gpu_check_script_parses():
    script = REPO / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "error", str(script)], check=True)
    text = script.read_text()
    for needed in (
        "strategy=fsdp",
        "strategy.devices=1",
        "strategy.accelerator=gpu",
        "trainer.max_steps=5",
        "bench_paper.py",
        "timeout",
        "torch==2.13.0",
        '-e ".[dev]"',
    ):
        assert needed in text, needed


def test_gpu_check_fsdp_overrides_compose():
    from tests.helpers import compose_cfg

    cfg = compose_cfg(
        [
            "strategy=fsdp",
            "strategy.devices=1",
            "strategy.accelerator=gpu",
            "trainer.max_steps=5",
            "model=tiny",
            "model.teacher_sft.max_steps=5",
            "data.synthetic.n_train=64",
            "data.synthetic.n_dev=8",
            "data.synthetic.n_test=4",
            "eval=none",
            "logger=none",
        ]
    )
    assert cfg.strategy.devices == 1 and cfg.trainer.max_steps == 5
