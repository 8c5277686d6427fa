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

from distillkit.config import value
from distillkit.data.datamodule import DistillDataModule
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.sft import SFT
from distillkit.models.pair import LoadedModel, export_student, load_model, load_tokenizer, same_vocabulary
from distillkit.module import DistillModule
from distillkit.utils.io import cache_dir, locked, sha256_file, stable_hash

log = logging.getLogger("distillkit")


class ConfigError(ValueError):
    """A config value that cannot work; raised before anything expensive."""


# ----------------------------------------------------------------------------- checks
def validate(cfg: DictConfig) -> None:
    stage = str(cfg.stage)
    if stage not in ("distill", "teacher_sft"):
        raise ConfigError(f"stage={stage!r}; valid: distill, teacher_sft")
    resume = str(cfg.resume)
    if resume not in ("auto", "never") and not Path(resume).is_file():
        raise ConfigError(f"resume={resume!r} is neither auto, never nor an existing checkpoint file")
    if stage == "distill" and not cfg.model.student.path and value(cfg.model.student.init) != "random":
        raise ConfigError(
            "model.student.path is empty: give an HF id or local folder, or model.student.init=random"
        )
    lm = cfg.get("layer_map")
    if lm is not None and lm.kind == "explicit":
        missing = [k for k in ("teacher", "student") if OmegaConf.is_missing(lm, k) or not lm[k]]
        if missing:
            raise ConfigError(
                f"layer_map=explicit needs {', '.join(f'layer_map.{k}=[...]' for k in missing)} "
                "(hidden_states indices, 0 = embeddings); or use layer_map=reference, uniform or last"
            )


def build_method(cfg: DictConfig) -> Method:
    """The run's :class:`~distillkit.methods.base.Method` from ``cfg.method`` (objectives get their
    layer map, span parser and cache location through the config's interpolations)."""
    from distillkit.methods import build_method as build

    return build(OmegaConf.to_container(cfg.method, resolve=True))


def enable_attention_capture(loaded: LoadedModel, needs: Any, configured: str | None) -> None:
    """Switch a model to an attention implementation that can hand over the layers ``needs`` names
    (``distillkit_sdpa`` unless ``model.<role>.attn_implementation`` chose ``distillkit_eager``)."""
    from distillkit.models.attention import IMPLEMENTATIONS, SDPA

    if needs is None or not needs.any_attention:
        return
    if configured and configured not in IMPLEMENTATIONS:
        raise MethodSetupError(
            f"model.{loaded.role}.attn_implementation={configured!r} returns no attention weights, which this "
            f"method needs; use one of {', '.join(IMPLEMENTATIONS)} (or leave it unset)"
        )
    model = loaded.model
    target = configured or SDPA
    if getattr(model.config, "_attn_implementation", None) != target:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.set_attn_implementation(target)


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
        train(tcfg, out_dir=root.with_name(root.name + ".work"), export_to=root, with_callbacks=False)
    return root


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
    # on-policy data (distillkit.data.onpolicy): distillation only; its settings checked before any loading
    onpolicy = cfg.get("onpolicy")
    use_onpolicy = stage == "distill" and onpolicy is not None and bool(onpolicy.enabled)
    if use_onpolicy:
        from distillkit.data.onpolicy import check_settings

        check_settings(**OmegaConf.to_container(onpolicy, resolve=True))
    # stage=teacher_sft fine-tunes the teacher alone: always plain SFT, whatever method is configured
    method = Method(SFT(), kd_rate=0.0) if stage == "teacher_sft" else build_method(cfg)

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
        )
    # re-seed so the student's initialisation does not depend on whether the teacher was just trained
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    student = load_model(trainee_side, trainee_role, cfg.cache_dir)
    method.setup(teacher, student)
    # attention is captured only for the layers the objectives name (distillkit.models.attention)
    enable_attention_capture(student, method.student_needs, trainee_side.attn_implementation)
    if teacher is not None:
        enable_attention_capture(teacher, method.teacher_needs, cfg.model.teacher.attn_implementation)

    shared = teacher is None or same_vocabulary(teacher.tokenizer, student.tokenizer)
    dm = DistillDataModule(
        cfg.data,
        student.tokenizer,
        teacher.tokenizer if teacher is not None else student.tokenizer,
        annotators=method.annotators(teacher, student),
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
