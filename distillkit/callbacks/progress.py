"""A plain-text progress line every N steps for runs without a terminal (logs, SLURM, CI)."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

log = logging.getLogger("distillkit")


class ProgressLog(L.Callback):
    def __init__(self, every_n_steps: int = 25, prefix: str = "train"):
        self.every, self.prefix = every_n_steps, prefix
        self._start = 0.0
        self._tokens = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += batch.num_tokens
        step = trainer.global_step
        if step % self.every or batch_idx % trainer.accumulate_grad_batches:
            return
        elapsed = time.perf_counter() - self._start
        loss = trainer.callback_metrics.get("train/loss")
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        log.info(
            "%s step %d/%s loss %s | %.0f tokens/s | %.0fs",
            self.prefix,
            step,
            total,
            f"{float(loss):.4f}" if loss is not None else "-",
            self._tokens / max(elapsed, 1e-9),
            elapsed,
        )
