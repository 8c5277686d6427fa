"""What a checkpoint carries besides Lightning's own state, so that a resume is checked and exact.

:class:`RunState` is added to every training by ``distillkit.pipeline.train`` (not a config option):

* **the training config** (``distillkit.pipeline.training_record``: the config minus paths, logging,
  evaluation, callbacks and resume keys, and its hash) goes into every checkpoint under
  ``checkpoint["distillkit"]["record"]`` and into ``train_config.json`` beside it, so that
  ``resume=auto`` compares configs without loading a checkpoint;
* **the RNG states** (torch CPU and CUDA, ``random``, numpy) at the save, set again before the first
  training batch after a restore, so that dropout and any other draw continue the same stream;
* **the train loader's state** is loaded even when ``configure_optimizers`` read
  ``trainer.estimated_stepping_batches``: that builds the train loader before the checkpoint is
  restored, and Lightning then never hands the saved loader state over (Lightning issue #20550). The
  state is loaded and the loader's iterator made again at ``on_train_start``, before the first batch;
  only for a checkpoint saved mid-epoch (one saved at the end of an epoch holds a finished pass, and
  the next epoch starts its own).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

TRAIN_CONFIG_JSON = "train_config.json"


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        # plain types and a tensor: Lightning loads checkpoints with torch.load(weights_only=True)
        states["numpy"] = [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ]
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy as np

        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class RunState(L.Callback):
    def __init__(self, record: dict[str, Any]):
        self.record = record
        self._rng_to_restore: dict[str, Any] | None = None

    # -- saving -----------------------------------------------------------------------------------
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["distillkit"] = {"record": self.record, "rng": rng_states()}
        if trainer.is_global_zero:
            from distillkit.utils.io import atomic_write_json

            atomic_write_json(self.checkpoint_dir(trainer) / TRAIN_CONFIG_JSON, self.record)

    @staticmethod
    def checkpoint_dir(trainer: L.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath:
            return Path(ckpt.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    # -- restoring --------------------------------------------------------------------------------
    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._rng_to_restore = (checkpoint.get("distillkit") or {}).get("rng")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
        combined = getattr(fit_loop, "_combined_loader", None)
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if not (pending and combined is not None and fetcher is not None):
            return
        fit_loop._combined_loader_states_to_load = []
        done = fit_loop.epoch_loop.batch_progress.current.completed
        if done >= trainer.num_training_batches:
            # saved at the end of an epoch: the next epoch starts a fresh pass (its order comes from
            # set_epoch), whereas the saved loader would report its finished pass as the next epoch
            return
        combined._load_state_dicts(pending)
        iter(fetcher)  # a new iterator, made from the loaded state
        log.info("restored the train loader at batch %d of the epoch", done)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
