"""One run, step by step: validate -> tokenizers -> method check -> (teacher SFT) -> models ->
data -> fit -> export -> evaluate -> results.json. ``distillkit.run`` is the Hydra entry point
around :func:`run`; every function here takes the composed config so tests can call them.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distillkit.checks import validate  # noqa: F401  (the checks before any loading; re-exported)
from distillkit.data.datamodule import DistillDataModule
from distillkit.errors import ConfigError  # noqa: F401  (re-exported)
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.sft import SFT
from distillkit.models.pair import LoadedModel, export_student, load_model, load_tokenizer, same_vocabulary
from distillkit.module import DistillModule
from distillkit.utils.io import cache_dir, locked, sha256_file, stable_hash

log = logging.getLogger("distillkit")


def build_method(cfg: DictConfig) -> Method:
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    method_cfg.pop("name", None)
    try:
        return instantiate(method_cfg, _convert_="all")
    except Exception as err:  # hydra wraps constructor errors; surface ours unchanged
        cause = err.__cause__ or err
        if isinstance(cause, (MethodSetupError, ValueError)):
            raise cause from None
        raise


# ----------------------------------------------------------------------------- teacher SFT
def sft_teacher_key(cfg: DictConfig) -> str:
    return stable_hash(
        OmegaConf.to_container(cfg.model.teacher, resolve=True),
        OmegaConf.to_container(cfg.model.teacher_sft, resolve=True),
        OmegaConf.to_container(cfg.data, resolve=True),
    )


def ensure_sft_teacher(cfg: DictConfig) -> Path:
    """The cached fine-tuned teacher of this config; trained (once, under a lock) when missing."""
    root = cache_dir(cfg.cache_dir) / "teachers" / f"{cfg.model.name}-{sft_teacher_key(cfg)}"
    if (root / "config.json").is_file():
        return root
    with locked(root):
        if (root / "config.json").is_file():  # another job trained it while we waited
            return root
        log.info("training the %s teacher (SFT, cached at %s)", cfg.model.name, root)
        sft = cfg.model.teacher_sft
        tcfg = OmegaConf.merge(
            cfg,
            {
                "stage": "teacher_sft",
                "seed": sft.seed,
                "data": {"batch_size": sft.batch_size},
                "trainer": {
                    "max_epochs": -1,
                    "max_steps": sft.max_steps,
                    "optim": {"lr": sft.lr, "warmup_steps": sft.warmup_steps},
                    "check_val_every_n_epoch": None,
                    "val_check_interval": None,
                },
                "resume": "never",
            },
        )
        work = root.with_name(root.name + ".work")
        train(tcfg, out_dir=work, export_to=root, with_callbacks=False)
        remove_work_dir(work)
    return root


def remove_work_dir(work: Path) -> None:
    """After a successful teacher SFT only the exported teacher stays in the cache: its scratch
    folder (``<entry>.work``, empty or holding Lightning's leftovers) goes."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- trainer
def _precision_and_device(cfg: DictConfig) -> dict[str, Any]:
    s = cfg.strategy
    return {
        "accelerator": s.accelerator,
        "devices": s.devices,
        "num_nodes": s.num_nodes,
        # a name ("ddp", "ddp_spawn", "auto") or a node with _target_ (e.g. distillkit.strategies.fsdp)
        "strategy": instantiate(s.strategy) if OmegaConf.is_dict(s.strategy) else s.strategy,
        "precision": s.precision,
    }


def build_trainer(
    cfg: DictConfig, out_dir: Path, with_callbacks: bool = True, extra_callbacks: list[Any] | None = None
) -> L.Trainer:
    """The Lightning trainer of one stage; ``extra_callbacks`` (e.g. the on-policy data source) are
    added to the configured ones."""
    t = cfg.trainer
    callbacks = []
    if with_callbacks and cfg.get("callbacks"):
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None and "_target_" in c]
    callbacks += list(extra_callbacks or [])
    logger: Any = False
    if with_callbacks and cfg.get("logger") and "_target_" in cfg.logger:
        logger = instantiate(cfg.logger)
    progress = t.enable_progress_bar
    if progress is None:
        progress = os.isatty(2)
    if progress and with_callbacks:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    else:
        from distillkit.callbacks.progress import ProgressLog

        callbacks.append(ProgressLog(prefix="train" if with_callbacks else str(cfg.stage)))
    kwargs = dict(
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        fast_dev_run=t.fast_dev_run,
        deterministic=t.deterministic,
        enable_progress_bar=bool(progress),
        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(out_dir),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **_precision_and_device(cfg),
    )
    for key in ("val_check_interval", "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches"):
        if t.get(key) is not None:
            kwargs[key] = t[key]
    if t.get("check_val_every_n_epoch") is None and t.get("val_check_interval") is None:
        kwargs["check_val_every_n_epoch"] = None
        kwargs["limit_val_batches"] = 0
    kwargs.update(OmegaConf.to_container(t.extra, resolve=True) if t.get("extra") else {})
    return L.Trainer(**kwargs)


def resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    resume = str(cfg.resume)
    if resume == "never":
        return None
    if resume == "auto":
        last = out_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return resume


# ----------------------------------------------------------------------------- one training
def train(
    cfg: DictConfig, out_dir: Path, export_to: Path | None = None, with_callbacks: bool = True
) -> dict[str, Any]:
    """Fit one stage; returns a summary (metrics, models, datamodule) for the caller."""
    validate(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = str(cfg.stage)
    # on-policy data (distillkit.data.onpolicy): distillation only; its settings were checked by validate
    onpolicy = cfg.get("onpolicy")
    use_onpolicy = stage == "distill" and onpolicy is not None and bool(onpolicy.enabled)
    # stage=teacher_sft fine-tunes the teacher alone: always plain SFT, whatever method is configured
    method = SFT() if stage == "teacher_sft" else build_method(cfg)
    method.configure(cfg)

    # tokenizers and the cheap method checks come before any weights are loaded
    trainee_side = cfg.model.teacher if stage == "teacher_sft" else cfg.model.student
    trainee_role = "teacher" if stage == "teacher_sft" else "student"
    s_tok = load_tokenizer(trainee_side.tokenizer or trainee_side.path, trainee_role, cfg.cache_dir)
    teacher: LoadedModel | None = None
    if stage == "distill" and method.teacher_needs is not None:
        t_tok = load_tokenizer(
            cfg.model.teacher.tokenizer or cfg.model.teacher.path, "teacher", cfg.cache_dir
        )
        method.check_tokenizers(t_tok, s_tok)
        weights = ensure_sft_teacher(cfg) if cfg.model.teacher_sft.enabled else None
        teacher = load_model(
            cfg.model.teacher,
            "teacher",
            cfg.cache_dir,
            weights_path=weights,
            attn_implementation=method.attn_implementation,
        )
    # re-seed so the student's initialisation does not depend on whether the teacher was just trained
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    student = load_model(
        trainee_side, trainee_role, cfg.cache_dir, attn_implementation=method.attn_implementation
    )
    method.setup(teacher, student)

    shared = teacher is None or same_vocabulary(teacher.tokenizer, student.tokenizer)
    dm = DistillDataModule(
        cfg.data,
        student.tokenizer,
        teacher.tokenizer if teacher is not None else student.tokenizer,
        annotators=method.annotators(cfg, teacher, student),
        shared_tokenizer=shared,
    )
    dm.setup("fit")
    module = DistillModule(student, teacher, method, cfg.trainer.optim)
    extra_callbacks = []
    if use_onpolicy:  # on-policy wiring: the source swaps batches in training_step and checkpoints its buffer
        from distillkit.data.onpolicy import StudentGeneratedData

        source = StudentGeneratedData.from_config(OmegaConf.to_container(onpolicy, resolve=True), dm)
        module.batch_source = source
        extra_callbacks.append(source)
    trainer = build_trainer(cfg, out_dir, with_callbacks=with_callbacks, extra_callbacks=extra_callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume_path(cfg, out_dir))
    train_seconds = time.perf_counter() - started
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    exported = None
    if export_to is not None and trainer.is_global_zero:
        exported = export_student(module.student, student.tokenizer, export_to)
    return {
        "metrics": metrics,
        "trainer": trainer,
        "module": module,
        "datamodule": dm,
        "student": student,
        "teacher": teacher,
        "method": method,
        "exported": exported,
        "train_seconds": train_seconds,
    }


# ----------------------------------------------------------------------------- provenance
def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    names = [
        "torch",
        "lightning",
        "hydra-core",
        "transformers",
        "tokenizers",
        "datasets",
        "peft",
        "spacy",
        "wandb",
    ]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def provenance(cfg: DictConfig, dm: DistillDataModule, tokenizers: dict[str, Any]) -> dict[str, Any]:
    files = {}
    root = cfg.data.get("root")
    for split, names in dm.report.get("source", {}).get("files", {}).items():
        for name in names:
            path = Path(root) / name if root else None
            if path is not None and path.is_file():
                files[f"{split}:{name}"] = sha256_file(path)
    tok_hashes = {}
    for role, tok in tokenizers.items():
        if tok is None:
            continue
        vocab = tok.get_vocab()
        tok_hashes[role] = {
            "name": tok.name_or_path,
            "size": len(tok),
            "vocab_sha": stable_hash(sorted(vocab.items())),
        }
    return {
        "git_commit": _git_commit(),
        "data_files": files,
        "tokenizers": tok_hashes,
        "versions": _versions(),
    }
