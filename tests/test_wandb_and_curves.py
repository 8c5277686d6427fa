"""W&B and curves records of a run (issue 13 items 11 and 14): the W&B run carries the whole
resolved config and a name per sweep job; the run folder gets a plot of its own training curves next to metrics.csv."""

from __future__ import annotations

import os

import pytest

from distillkit.loggers import plot_training_curves, read_metrics
from distillkit.run import run
from tests.helpers import SMALL, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_curves_draw_every_loss_term_lr_tokens_and_rouge(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,lr-AdamW/student,train/ce,train/kd,train/loss,train/tokens_per_s,val/loss,val/rougeL,test/rougeL/avg\n"
        "0,0,0.001,5.0,1.0,3.0,1000,,,\n"
        "0,1,0.002,4.0,0.8,2.4,1100,,,\n"
        "0,1,,,,,,2.5,10.0,\n"
        "0,2,0.001,3.5,nan,2.1,1050,,,\n"
        "1,2,,,,,,,,12.5\n"
    )
    series = read_metrics(csv_path)
    assert series["train/kd"] == [(0, 1.0), (1, 0.8)]  # empty and non-finite cells are skipped
    panels = plot_training_curves(csv_path)
    assert panels == {
        "train loss terms": ["train/ce", "train/kd", "train/loss"],
        "val loss terms": ["val/loss"],
        "learning rate": ["lr-AdamW/student"],
        "tokens/s": ["train/tokens_per_s"],
        "dev ROUGE-L": ["val/rougeL"],
    }
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000


def test_no_metric_yet_draws_nothing(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step\n")
    assert plot_training_curves(tmp_path / "metrics.csv") == {}
    assert not (tmp_path / "curves.png").exists()


def test_a_tiny_run_writes_its_curves_next_to_metrics_csv(tmp_path):
    overrides = [o for o in SMALL if o != "logger=none"] + [
        "logger=csv",
        "method=mta",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.dev_rouge.max_prompts=2",
        "callbacks.dev_rouge.max_new_tokens=4",
        "~callbacks.checkpoint",
        "final_eval=false",
        "export=false",
    ]
    run(compose_cfg(overrides, tmp_path))
    csv_dir = tmp_path / "csv"
    png = (csv_dir / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    series = read_metrics(csv_dir / "metrics.csv")
    for term in (
        "train/ce",
        "train/kd",
        "train/dsa",
        "train/hra",
        "train/loss",
        "train/tokens_per_s",
        "val/rougeL",
    ):
        assert term in series, sorted(series)
    assert any(k.startswith("lr-") for k in series)
    panels = plot_training_curves(csv_dir / "metrics.csv", tmp_path / "again.png")
    assert {"train/dsa", "train/hra"} <= set(panels["train loss terms"]) and "dev ROUGE-L" in panels


# ----------------------------------------------------------------------------- W&B
def _wandb_logger(tmp_path, *overrides):
    from hydra.utils import instantiate

    import distillkit.run  # noqa: F401  (registers the wandb_offline resolver, as the CLI does)

    cfg = compose_cfg(["logger=wandb", *overrides], tmp_path)
    return cfg, instantiate(cfg.logger)


def test_wandb_run_logs_the_whole_resolved_config_and_names_sweep_jobs_apart(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    cfg, logger = _wandb_logger(tmp_path / "a", "trainer.optim.lr=1e-4", "data.batch_size=4", "seed=7")
    try:
        experiment = logger.experiment  # starts the offline run
        config = dict(experiment.config)
        assert config["trainer"]["optim"]["lr"] == 1e-4 and config["data"]["batch_size"] == 4
        assert (
            config["seed"] == 7
            and config["model"]["name"] == "tiny"
            and config["data"]["name"] == "synthetic"
        )
        assert config["method"]["divergence"] == "fkl" and config["data"]["template"] == "none"
        assert "hydra" not in config and "logger" not in config
        name = experiment.name
    finally:
        wandb.finish()
    assert name.startswith("kd-tiny-s7-") and "trainer.optim.lr=1e-4" in name
    # two jobs of a sweep that differ only in the learning rate get different names
    _, other = _wandb_logger(tmp_path / "b", "trainer.optim.lr=3e-4", "data.batch_size=4", "seed=7")
    assert other._wandb_init["name"] != name and "trainer.optim.lr=3e-4" in other._wandb_init["name"]
    assert os.listdir(tmp_path / "a" / "wandb")  # the offline run is on disk, for `wandb sync`
