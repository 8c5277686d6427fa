"""Tag every run with its method, ablation switches and experiment, for any logger (CSV, W&B).

At fit start the run's tags (method knobs, ``method.terms`` multipliers, ``tags.ablation``, the
experiment name, the layer map) go to ``logger.log_hyperparams``; with W&B they also become the run's
tags and group. (The W&B run's config is the whole resolved run config, passed by
``conf/logger/wandb.yaml`` through ``${distillkit.run_config:}``, and its name carries the job's
overrides, so the jobs of a sweep are told apart.) After the final evaluation, :func:`log_evaluation` logs ROUGE-L per set as metrics
and, with W&B, a table per set and a sample of the predictions. Works offline (W&B offline mode) and
under Hydra multirun (``distillkit.run`` calls ``wandb.finish()`` at the end of every job).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


def _loggers(trainer: L.Trainer) -> list[Any]:
    return list(getattr(trainer, "loggers", []) or [])


def _is_wandb(logger: Any) -> bool:
    return type(logger).__name__ == "WandbLogger"


def flat_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly scalars (lists and dicts as JSON strings) for hyperparameter tables."""
    out = {}
    for key, value in tags.items():
        out[f"tags/{key}"] = (
            value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
        )
    return out


class AblationLogger(L.Callback):
    def __init__(self, tags: dict[str, Any] | None = None):
        self.tags = dict(tags or {})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tags = {**self.tags, **pl_module.method.tags()}
        for logger in _loggers(trainer):
            logger.log_hyperparams(flat_tags(tags))
            if _is_wandb(logger):
                run = logger.experiment
                labels = [f"{k}={v}" for k, v in tags.items() if isinstance(v, (str, int, float, bool))]
                run.tags = tuple(sorted(set(run.tags or ()) | {label[:64] for label in labels}))


def log_evaluation(
    trainer: L.Trainer, evaluation: dict[str, Any] | None, out_dir: Path, sample: int = 20
) -> None:
    """ROUGE-L per set as ``test/rougeL/<set>`` metrics; with W&B also a table and a predictions sample."""
    if not evaluation:
        return
    sets = evaluation.get("sets") or {}
    metrics = {f"test/rougeL/{name}": s["mean"] for name, s in sets.items() if not s.get("missing")}
    if evaluation.get("avg") is not None:
        metrics["test/rougeL/avg"] = evaluation["avg"]
    for logger in _loggers(trainer):
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()  # after fit the loggers were finalized: write these rows too (metrics.csv)
        if not _is_wandb(logger):
            continue
        import wandb

        rows = [
            [
                name,
                None if s.get("missing") else s["mean"],
                None if s.get("missing") else s.get("std"),
                s.get("n_prompts"),
                bool(s.get("missing")),
            ]
            for name, s in sets.items()
        ]
        table = wandb.Table(
            columns=["set", "rougeL", "std_over_generation_seeds", "n_prompts", "missing"], data=rows
        )
        payload: dict[str, Any] = {"test/rougeL_table": table}
        preds = []
        for path in sorted((out_dir / "predictions").glob("*.jsonl")):
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i >= sample:
                        break
                    r = json.loads(line)
                    preds.append([path.stem, r.get("prompt"), r.get("generation"), r.get("score")])
        if preds:
            payload["test/predictions"] = wandb.Table(
                columns=["set", "prompt", "generation", "rougeL"], data=preds
            )
        logger.experiment.log(payload)
