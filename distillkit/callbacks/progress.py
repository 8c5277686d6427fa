"""A plain-text progress line every N optimizer steps for runs without a terminal (logs, SLURM, CI).

The line is keyed on optimizer steps (``trainer.global_step``), not on batches: with gradient
accumulation a step completes every ``accumulate_grad_batches`` batches, and the line appears once
per completed step that is a multiple of ``every_n_steps``, and once for the last step of the run
(``step 50/50``), whatever the accumulation.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

log = logging.getLogger("distillkit")


class ProgressLog(L.Callback):
    def __init__(self, every_n_steps: int = 25, prefix: str = "train"):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}; must be >= 1")
        self.every, self.prefix = every_n_steps, prefix
        self._start = 0.0
        self._tokens = 0
        self._last_logged = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens = time.perf_counter(), 0
        self._last_logged = trainer.global_step  # a resumed run does not repeat its first step's line

    @staticmethod
    def total_steps(trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            total = trainer.estimated_stepping_batches
        except Exception:  # pragma: no cover - an unsized loader
            return None
        return int(total) if total != float("inf") else None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += getattr(batch, "num_tokens", 0)
        step = trainer.global_step
        if step == self._last_logged:  # no optimizer step completed with this batch
            return
        total = self.total_steps(trainer)
        if step % self.every == 0 or step == total:
            self._log(trainer, step, total)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_logged:  # the run ended between two logged steps
            self._log(trainer, trainer.global_step, self.total_steps(trainer))

    def _log(self, trainer: L.Trainer, step: int, total: int | None) -> None:
        self._last_logged = step
        elapsed = time.perf_counter() - self._start
        loss = trainer.callback_metrics.get("train/loss")
        log.info(
            "%s step %d/%s loss %s | %.0f tokens/s | %.0fs",
            self.prefix,
            step,
            total if total is not None else "?",
            f"{float(loss):.4f}" if loss is not None else "-",
            self._tokens / max(elapsed, 1e-9),
            elapsed,
        )
