"""Save a checkpoint when the job is asked to stop (SIGTERM, SLURM's SIGUSR1, submitit's preemption signal).

What a stopped run leaves and how it ends (``distillkit.run``):

* ``checkpoints/last.ckpt`` (written atomically) after the batch in flight, with the loop, optimizer,
  scheduler and data-loader state, so ``resume=auto`` continues at that exact step;
* no ``results.json``; a ``PREEMPTED`` marker in the run folder instead of ``FAILED``;
* the process exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL`` of ``sysexits.h``: "try again"),
  so a scheduler or an ``&&`` chain never mistakes it for a finished run;
* under Hydra's submitit launcher (SLURM or local) the job is requeued instead: submitit's own handler
  for its preemption signal (``SIGUSR2`` unless ``$SUBMITIT_PREEMPT_SIGNAL`` says otherwise) is held
  back until the checkpoint is on disk, then called, and it requeues the same job (same run folder).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: the exit status of a preempted run (sysexits.h EX_TEMPFAIL: a temporary failure, retry)
EXIT_PREEMPTED = 75
#: the marker file a preempted run leaves in its folder (removed when the run completes)
PREEMPTED_MARKER = "PREEMPTED"


@dataclass
class Preemption:
    """What a stopped run did; attached to the ``SIGTERMException`` as ``.preemption``."""

    signal: str
    step: int
    checkpoint: str
    #: submitit's handler, held back until the checkpoint was saved: calling it requeues the job
    requeue: Callable[[], Any] | None = None


def submitit_signals() -> tuple[str, ...]:
    """submitit's preemption signal when this process is a submitit job, else nothing."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return ()
    return ("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"),)


class PreemptionCheckpoint(L.Callback):
    """On a stop signal: finish the current batch, write ``last.ckpt``, stop with ``SIGTERMException``.

    The stop goes through Lightning's own SIGTERM path (``trainer.received_sigterm``), so the batch in
    flight completes (progress counters, logging, validation due at that batch) before the loop raises;
    the saved loop and loader state then match exactly. Previous handlers are chained: Lightning's
    SIGTERM notifier and SLURM auto-requeue at once, submitit's requeue (``requeue_signals``, default
    :func:`submitit_signals`) only after the checkpoint is written (see :class:`Preemption`).
    """

    def __init__(
        self,
        signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        requeue_signals: tuple[str, ...] | None = None,
    ):
        requeue_signals = submitit_signals() if requeue_signals is None else tuple(requeue_signals)
        names = list(dict.fromkeys([*signals, *requeue_signals]))
        self.signals = [getattr(signal, s) for s in names if hasattr(signal, s)]
        self.deferred = {getattr(signal, s) for s in requeue_signals if hasattr(signal, s)}
        self.requested: str | None = None
        self._requeue: Callable[[], Any] | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s: checkpointing after this batch", name)
        self.requested = name
        connector = getattr(self._trainer, "_signal_connector", None)
        if connector is not None:  # Lightning stops after the batch (and broadcasts it to every rank)
            connector.received_sigterm = True
        previous = self._previous.get(signum)
        if not callable(previous):
            return
        if signum in self.deferred:
            self._requeue = lambda: previous(signum, frame)
        else:
            previous(signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # a Lightning without ``_signal_connector``: stop here instead (the batch's progress is then
        # one short in the checkpoint, as before)
        if self.requested and getattr(trainer, "_signal_connector", None) is None:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        path = self.last_path(trainer)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(str(tmp))  # every rank (sharded strategies); rank zero writes
        if trainer.is_global_zero:
            if tmp.is_dir() and path.exists():  # a sharded checkpoint is a folder
                import shutil

                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        log.warning("saved %s at step %d; stopping (resume with resume=auto)", path, trainer.global_step)
        exception.preemption = Preemption(  # type: ignore[attr-defined]
            signal=self.requested or "SIGTERM",
            step=int(trainer.global_step),
            checkpoint=str(path),
            requeue=self._requeue,
        )
        self.requested, self._requeue = None, None
        self._restore_handlers()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        self._trainer = None

    @staticmethod
    def last_path(trainer: L.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        # the folder resume=auto reads (<run dir>/checkpoints) when no ModelCheckpoint says otherwise
        folder = (
            Path(ckpt.dirpath)
            if ckpt is not None and ckpt.dirpath
            else Path(trainer.default_root_dir) / "checkpoints"
        )
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "last.ckpt"
