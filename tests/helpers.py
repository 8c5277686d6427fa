"""Composing configs in tests the way `python -m distillkit.run` does (Hydra compose API)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import distillkit.config  # noqa: F401  (registers the structured-config schemas, as distillkit.run does)

CONF = Path(__file__).resolve().parents[1] / "conf"

#: overrides that make any run tiny and quick on the CPU
SMALL = [
    "data.synthetic.n_train=64",
    "data.synthetic.n_dev=16",
    "data.synthetic.n_test=8",
    "data.batch_size=8",
    "model.teacher_sft.max_steps=4",
    "model.teacher_sft.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.max_steps=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


def compose_cfg(overrides: list[str] | None = None, out_dir: Path | None = None) -> DictConfig:
    """The composed run config with ``hydra.runtime.output_dir`` set to ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides or []), return_hydra_config=True)
    if out_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    return cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


#: the config groups a user picks options from
REPO_GROUPS = sorted(
    p.name
    for p in CONF.iterdir()
    if p.is_dir() and p.name not in ("hydra", "local") and any(p.glob("*.yaml"))
)


class SigtermAt(L.Callback):
    """Sends this process ``signal`` once, after optimizer step ``step``, as a scheduler would. Added
    from the config like any callback: ``+callbacks.stop._target_=tests.helpers.SigtermAt``."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal, self.sent = step, signal, False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))


def stop_at(step: int, sig: str = "SIGTERM") -> list[str]:
    """Overrides that add a :class:`SigtermAt` callback."""
    return [
        "+callbacks.stop._target_=tests.helpers.SigtermAt",
        f"+callbacks.stop.step={step}",
        f"+callbacks.stop.signal={sig}",
    ]


def shrunken_qwen_to_gpt2(data_root: Path, teacher_layers: int = 2) -> list[str]:
    """``model=qwen-to-gpt2`` shrunk to a few random-init layers with the real Qwen2 / GPT-2 tokenizers of
    the data root, on a handful of real Dolly rows (``data=dolly_smoke``), training one step quietly."""
    tok = Path(data_root) / "tokenizers"
    return [
        "model=qwen-to-gpt2",
        "data=dolly_smoke",
        f"data.root={data_root}",
        "model.teacher.init=random",
        "model.student.init=random",
        f"model.teacher.tokenizer={tok / 'qwen2'}",
        f"model.student.tokenizer={tok / 'gpt2'}",
        f"model.teacher.layers={teacher_layers}",
        "model.teacher.hidden=64",
        "model.teacher.heads=4",
        "model.teacher.intermediate=128",
        "model.teacher.dtype=float32",
        "model.student.layers=2",
        "model.student.hidden=32",
        "model.student.heads=2",
        "model.student.intermediate=64",
        "data.max_dev_rows=4",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "callbacks=none",
        "final_eval=false",
        "export=false",
    ]
