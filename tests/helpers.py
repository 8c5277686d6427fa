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


class StepRecorder(L.Callback):
    """Records, on every rank, each step's sample ids, token count and loss terms (computed before the
    update on the batch the rank received), and checks the frozen teacher and the batch's span
    memberships; writes ``<out>/steps.rank<r>.json`` at the end and a checkpoint ``<out>/end.ckpt``.

    ``shards``: also record the terms of the would-be rank shards ``index[r::shards]`` of each batch (a
    one-process run computes what each of ``shards`` DDP ranks should see at the same weights).
    Added from the config: ``+callbacks.rec._target_=tests.helpers.StepRecorder +callbacks.rec.out=DIR``.
    """

    def __init__(self, out: str, shards: int = 0, checkpoint: bool = True):
        self.out, self.shards, self.checkpoint = out, int(shards), checkpoint
        self.steps: list[dict] = []
        self.frozen: dict = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        teacher = pl_module.teacher
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        params = list(teacher.parameters()) if teacher is not None else []
        self.frozen = {
            "teacher_params": len(params),
            "requires_grad": sum(p.requires_grad for p in params),
            "in_optimizer": sum(id(p) in in_optimizer for p in params),
            "teacher_training": bool(teacher is not None and teacher.training),
            "teacher_dtype": str(params[0].dtype) if params else None,
            "student_dtype": str(next(pl_module.student.parameters()).dtype),
        }

    def _terms(self, pl_module: L.LightningModule, batch) -> dict[str, float]:
        import torch

        # under the precision plugin's context, as training_step runs (bf16 autocast / bf16 default dtype)
        with torch.no_grad(), pl_module.trainer.precision_plugin.forward_context():
            terms = pl_module.compute_terms(batch)
            loss = pl_module.weighted_loss(terms)
        out = {k: float(v) for k, v in terms.items()}
        out["loss"] = float(loss)
        out["dtypes"] = sorted({str(v.dtype) for v in terms.values()})
        return out

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int):
        import torch

        from distillkit.data.datamodule import collate

        examples = trainer.datamodule.examples["train"]
        index = batch.index.tolist()
        # the batch's span memberships are the collate of these samples' own annotations
        again = collate([examples[i] for i in index])
        for name, grid in batch.grids.items():
            for side in ("student", "teacher"):
                a, b = getattr(grid, side), getattr(again.grids[name], side)
                assert torch.equal(a.token_index.cpu(), b.token_index) and torch.equal(
                    a.span_index.cpu(), b.span_index
                ), (name, side, index)
        record = {
            "step": trainer.global_step,
            "index": index,
            "tokens": int(batch.student.loss_mask.sum()),
            "spans": {n: int(g.span_mask.sum()) for n, g in batch.grids.items()},
            "terms": self._terms(pl_module, batch),
        }
        if self.shards > 1:
            record["shards"] = [
                self._terms(pl_module, collate([examples[i] for i in index[r :: self.shards]]))
                for r in range(self.shards)
            ]
        self.steps.append(record)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        import torch

        if trainer.global_step == 0 and trainer.global_rank == 0:  # the first update's (all-reduced) gradient
            grads = [p.grad.detach().flatten() for p in pl_module.student.parameters() if p.grad is not None]
            Path(self.out).mkdir(parents=True, exist_ok=True)
            torch.save(torch.cat(grads), Path(self.out) / "grad0.pt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import json

        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (out / f"steps.rank{rank}.json").write_text(
            json.dumps(
                {"rank": rank, "world": trainer.world_size, "frozen": self.frozen, "steps": self.steps}
            )
        )
        if self.checkpoint:
            trainer.save_checkpoint(str(out / "end.ckpt"))  # every rank calls it; rank 0 writes


def record_steps(out: Path, shards: int = 0, checkpoint: bool = True) -> list[str]:
    """Overrides that add a :class:`StepRecorder` writing into ``out``."""
    return [
        "+callbacks.rec._target_=tests.helpers.StepRecorder",
        f"+callbacks.rec.out={out}",
        f"+callbacks.rec.shards={shards}",
        f"+callbacks.rec.checkpoint={str(checkpoint).lower()}",
    ]
