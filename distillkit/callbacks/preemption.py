"""Save a checkpoint when the job is asked to stop (SIGTERM, or SLURM's SIGUSR1 before preemption)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM/SIGUSR1: finish the current batch, write ``last.ckpt`` and exit.

    The job ends with Lightning's ``SIGTERMException`` (a ``SystemExit``), so no ``results.json`` is
    written for an unfinished run; resuming (``resume=auto``) continues from that step. Lightning's
    own SIGTERM notifier is kept (this handler chains to it).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")):
        self.signals = [getattr(signal, s) for s in signals if hasattr(signal, s)]
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        log.warning("received signal %d: checkpointing after this batch", signum)
        self.requested = True
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # a signal Lightning does not watch (e.g. SIGUSR1 outside SLURM): stop the same way
        if self.requested:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning stops a SIGTERMed run with SIGTERMException at the end of the batch in flight
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        path = self.last_path(trainer)
        trainer.save_checkpoint(str(path))
        log.warning("saved %s; stopping (resume with resume=auto)", path)
        self.requested = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @staticmethod
    def last_path(trainer: L.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "last.ckpt"
