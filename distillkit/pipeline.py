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
from distillkit.errors import ConfigError, DataError
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.sft import SFT
from distillkit.models.pair import LoadedModel, export_student, load_model, load_tokenizer, same_vocabulary
from distillkit.module import DistillModule
from distillkit.utils.io import cache_dir, locked, sha256_file, stable_hash

log = logging.getLogger("distillkit")


# ----------------------------------------------------------------------------- checks
def validate(cfg: DictConfig) -> None:
    """Every check that needs no weights and no data preparation, before any of them runs (and
    before a teacher SFT): stage and resume, the model paths, batch sizes and row limits, the
    trainer's numbers, the data files, the on-policy settings and, for MTA, the layer map against
    both models' depths read from their configs (:func:`distillkit.models.depth.model_depth`).
    Closed choices (templates, schedules, ...) are enums and fail earlier, at compose time."""
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
    if lm is not None and value(lm.kind) == "explicit":
        missing = [k for k in ("teacher", "student") if OmegaConf.is_missing(lm, k) or not lm[k]]
        if missing:
            raise ConfigError(
                f"layer_map=explicit needs {', '.join(f'layer_map.{k}=[...]' for k in missing)} "
                "(hidden_states indices, 0 = embeddings); or use layer_map=reference, uniform or last"
            )
    _validate_numbers(cfg)
    _validate_model_paths(cfg)
    _validate_data_files(cfg.data)
    _validate_onpolicy(cfg)
    _validate_layer_map(cfg)


def _check(key: str, got: Any, ok: bool, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={got!r}; must be {valid}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_numbers(cfg: DictConfig) -> None:
    """Batch sizes, row and length limits, step counts and rates: each named with its valid range."""
    d, t, o = cfg.data, cfg.trainer, cfg.trainer.optim
    positive = "an integer >= 1"
    for key in ("batch_size", "eval_batch_size", "max_prompt_tokens", "max_total_tokens"):
        _check(f"data.{key}", d[key], _is_int(d[key]) and d[key] >= 1, positive)
    for key in ("max_train_rows", "max_dev_rows"):
        _check(
            f"data.{key}", d[key], d[key] is None or (_is_int(d[key]) and d[key] >= 1), f"{positive} or null"
        )
    _check(
        "data.max_total_tokens",
        d.max_total_tokens,
        d.max_total_tokens > d.max_prompt_tokens,
        f"larger than data.max_prompt_tokens={d.max_prompt_tokens} (room for a response)",
    )
    _check("data.num_workers", d.num_workers, d.num_workers >= 0, "an integer >= 0")
    if value(d.source) == "synthetic":
        _check("data.synthetic.n_train", d.synthetic.n_train, d.synthetic.n_train >= 1, positive)
        for key in ("n_dev", "n_test"):
            _check(f"data.synthetic.{key}", d.synthetic[key], d.synthetic[key] >= 0, "an integer >= 0")
    _check("trainer.max_steps", t.max_steps, t.max_steps == -1 or t.max_steps >= 1, "-1 (no limit) or >= 1")
    _check(
        "trainer.max_epochs", t.max_epochs, t.max_epochs == -1 or t.max_epochs >= 1, "-1 (no limit) or >= 1"
    )
    if t.max_steps == -1 and t.max_epochs == -1:
        raise ConfigError("trainer.max_steps=-1 and trainer.max_epochs=-1: the run would never end; set one")
    _check(
        "trainer.accumulate_grad_batches", t.accumulate_grad_batches, t.accumulate_grad_batches >= 1, positive
    )
    _check("trainer.log_every_n_steps", t.log_every_n_steps, t.log_every_n_steps >= 1, positive)
    clip = t.gradient_clip_val
    _check("trainer.gradient_clip_val", clip, clip is None or clip >= 0, ">= 0 or null")
    _check("trainer.optim.lr", o.lr, o.lr > 0, "> 0")
    _check(
        "trainer.optim.projector_lr",
        o.projector_lr,
        o.projector_lr is None or o.projector_lr > 0,
        "> 0 or null",
    )
    _check("trainer.optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0")
    _check("trainer.optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, "an integer >= 0")
    _check("trainer.optim.warmup_ratio", o.warmup_ratio, 0.0 <= o.warmup_ratio < 1.0, "in [0, 1)")
    sft = cfg.model.teacher_sft
    if str(cfg.stage) == "distill" and sft.enabled:
        _check("model.teacher_sft.batch_size", sft.batch_size, sft.batch_size >= 1, positive)
        _check("model.teacher_sft.max_steps", sft.max_steps, sft.max_steps >= 1, positive)
        _check("model.teacher_sft.lr", sft.lr, sft.lr > 0, "> 0")
        _check("model.teacher_sft.warmup_steps", sft.warmup_steps, sft.warmup_steps >= 0, "an integer >= 0")


def _validate_model_paths(cfg: DictConfig) -> None:
    """Model and tokenizer paths written as local paths must be folders (no HF repo-id message)."""
    from distillkit.models.depth import check_model_path
    from distillkit.models.pair import TINY_PREFIX

    roles = ("teacher",) if str(cfg.stage) == "teacher_sft" else ("teacher", "student")
    for role in roles:
        side = cfg.model[role]
        if side.path and value(side.init) == "pretrained":
            check_model_path(str(side.path), f"model.{role}.path")
        if side.tokenizer and not str(side.tokenizer).startswith(TINY_PREFIX):
            check_model_path(str(side.tokenizer), f"model.{role}.tokenizer", "tokenizer")


def _validate_data_files(d: DictConfig) -> None:
    """For ``source: jsonl``: the data root is a folder and every split's glob matches a file."""
    if value(d.source) != "jsonl":
        return
    import glob

    from distillkit.utils.io import data_root

    root = data_root(d.root)
    for split in ("train", "dev", "test"):
        pattern = d.get(split)
        if pattern and not glob.glob(str(root / pattern)):
            raise DataError(
                f"data.{split}={pattern!r} matches no file under data.root={str(root)!r}; "
                "check data.root / $DISTILLKIT_DATA_ROOT or the glob."
            )


def _validate_onpolicy(cfg: DictConfig) -> None:
    onpolicy = cfg.get("onpolicy")
    if str(cfg.stage) != "distill" or onpolicy is None or not bool(onpolicy.enabled):
        return
    from distillkit.data.onpolicy import check_settings

    try:
        check_settings(**OmegaConf.to_container(onpolicy, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _validate_layer_map(cfg: DictConfig) -> None:
    """MTA's layer map against both depths from the models' configs (``config.json`` / ``arch_config``),
    so a bad index fails in seconds, not after a teacher SFT."""
    if str(cfg.stage) != "distill" or cfg.method.get("name") != "mta" or cfg.get("layer_map") is None:
        return
    from distillkit.models.depth import model_depth
    from distillkit.models.layer_map import resolve_layer_map

    depths = {role: model_depth(cfg.model[role], role) for role in ("teacher", "student")}
    try:
        resolve_layer_map(
            cfg.layer_map,
            cfg.model,
            depths["teacher"],
            depths["student"],
            value(cfg.method.get("level", "both")),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


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
