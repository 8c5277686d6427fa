"""Every shipped experiment runs (fast_dev_run, shrunk to the tiny pair); sweeps survive a failing job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg, group_options

TINY = SMALL + [
    "model=tiny",
    "data=synthetic",
    "eval=dev",
    "strategy=single",
    "callbacks=none",
    "trainer.fast_dev_run=true",
    "layer_map=reference",
    "model.student.lora=null",  # an experiment's LoRA targets name its own family's layers, not GPT-2's
]


@pytest.mark.parametrize("experiment", [e for e in group_options("experiment") if not e.endswith("_sweep")])
def test_every_experiment_runs_fast_dev_run_on_the_tiny_pair(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}"] + TINY + ["onpolicy.init_threshold=1.0"], tmp_path)
    assert cfg.experiment_name == experiment
    out = train(cfg, tmp_path)
    assert out["trainer"].global_step == 1
    assert out["method"].name == cfg.method.name


def test_the_ablation_sweep_records_a_failing_job_and_runs_the_others(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "distillkit.run",
        "-m",
        "experiment=mta_ablation_sweep",
        "model=tiny",
        "data=synthetic",
        "eval=dev",
        "onpolicy.enabled=false",
        "strategy=single",
        "callbacks=none",
        "logger=none",
        "trainer.max_steps=1",
        "data.synthetic.n_train=16",
        "data.synthetic.n_dev=4",
        "data.synthetic.n_test=2",
        "eval.max_prompts=2",
        "eval.max_new_tokens=4",
        "model.teacher_sft.max_steps=2",
        "hydra.sweeper.params.ablation=no_dsa",
        "layer_map.num_pairs=7,1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[1])
    failed, done = tmp_path / "0", tmp_path / "1"
    assert "num_pairs=7" in (failed / "FAILED").read_text()
    assert (done / "results.json").is_file() and not (done / "FAILED").exists()
