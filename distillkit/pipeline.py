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

from distillkit.callbacks.run_state import TRAIN_CONFIG_JSON, RunState
from distillkit.checks import validate  # noqa: F401  (the checks before any loading; re-exported)
from distillkit.config import value
from distillkit.data.datamodule import DistillDataModule
from distillkit.errors import ConfigError  # noqa: F401  (re-exported)
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.sft import SFT
from distillkit.models.pair import LoadedModel, export_student, load_model, load_tokenizer, same_vocabulary
from distillkit.module import DistillModule
from distillkit.strategies import SHARDED_METADATA, is_sharded_checkpoint
from distillkit.utils.io import atomic_write_json, cache_dir, locked, sha256_file, stable_hash

log = logging.getLogger("distillkit")


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
#: the ``data`` keys that decide which rows the teacher is fine-tuned on and how they are written: the
#: source, its location and train files, the row limit and the seed that samples and shuffles them, the
#: template, the length limits. Not the student's batch sizes, the dev/test sets or the loader workers.
TEACHER_DATA_KEYS = (
    "source",
    "root",
    "train",
    "hub_id",
    "synthetic",
    "template",
    "max_prompt_tokens",
    "max_total_tokens",
    "max_train_rows",
    "shuffle_seed",
)
#: the ``strategy`` keys that change the teacher's numbers (precision, world size)
TEACHER_STRATEGY_KEYS = ("precision", "devices", "num_nodes")


def _plain(node: Any) -> Any:
    """A config node or value as plain JSON-able data (enums as their values)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return value(node)


def teacher_sft_strategy(cfg: DictConfig) -> DictConfig:
    """The strategy of the teacher's own fine-tuning: the run's, except under the strategies whose ranks
    are separate runs of the command (``strategy=ddp``: re-run by Lightning, or SLURM tasks / torchrun;
    ``fsdp``, ``fsdp1``), where the teacher is fine-tuned on one process of the same accelerator and
    precision. There every rank runs this stage itself, and the ranks would wait for the cache lock the
    first one holds while it waits for them in its process group; with one process the others wait for
    the lock and then load the cached teacher. ``ddp_spawn`` spawns its ranks inside ``fit``: it keeps
    the run's strategy."""
    from distillkit.strategies import is_sharded

    if not (is_sharded(cfg) or str(cfg.strategy.get("strategy")) == "ddp"):
        return cfg.strategy
    s = cfg.strategy
    return OmegaConf.create(
        {
            "accelerator": s.accelerator,
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "precision": s.precision,
        }
    )


def sft_teacher_inputs(cfg: DictConfig) -> dict[str, Any]:
    """Everything the cached fine-tuned teacher depends on, and nothing else: the teacher's model
    config, its SFT settings (``model.teacher_sft``), the data it trains on (:data:`TEACHER_DATA_KEYS`)
    and the precision/world size (:data:`TEACHER_STRATEGY_KEYS`). The teacher's trainer settings are
    fixed (:func:`teacher_sft_config`), so none of the student's trainer keys belong here."""
    return {
        "teacher": _plain(cfg.model.teacher),
        "sft": _plain(cfg.model.teacher_sft),
        "data": {k: _plain(cfg.data.get(k)) for k in TEACHER_DATA_KEYS},
        "strategy": {k: _plain(teacher_sft_strategy(cfg).get(k)) for k in TEACHER_STRATEGY_KEYS},
    }


def sft_teacher_key(cfg: DictConfig) -> str:
    """The cache key of the fine-tuned teacher: a hash of :func:`sft_teacher_inputs`."""
    return stable_hash(sft_teacher_inputs(cfg))


def teacher_sft_config(cfg: DictConfig) -> DictConfig:
    """The config of the teacher's own fine-tuning: ``stage=teacher_sft`` on the run's data and
    strategy, with a trainer built from the schema defaults (``TrainerConfig``: AdamW, weight decay
    0.01, cosine schedule, clipping 1.0, no accumulation) and ``model.teacher_sft``'s steps, lr,
    warmup, batch size and seed. Nothing of the student's ``trainer`` leaks in, so that the key
    (:func:`sft_teacher_inputs`) covers everything the teacher depends on."""
    from distillkit.config import TrainerConfig

    sft = cfg.model.teacher_sft
    trainer = OmegaConf.merge(
        OmegaConf.structured(TrainerConfig),
        {
            "max_epochs": -1,
            "max_steps": sft.max_steps,
            "check_val_every_n_epoch": None,
            "val_check_interval": None,
            "optim": {"lr": sft.lr, "warmup_steps": sft.warmup_steps},
            # display only
            "enable_progress_bar": cfg.trainer.get("enable_progress_bar"),
            "log_every_n_steps": cfg.trainer.get("log_every_n_steps", 10),
        },
    )
    tcfg = OmegaConf.merge(
        cfg,
        {"stage": "teacher_sft", "seed": sft.seed, "data": {"batch_size": sft.batch_size}, "resume": "never"},
    )
    tcfg.trainer = trainer
    tcfg.strategy = teacher_sft_strategy(cfg)
    return tcfg


TEACHER_RECORD = "distillkit_teacher.json"


def ensure_sft_teacher(cfg: DictConfig) -> Path:
    """The cached fine-tuned teacher of this config; trained (once, under a lock) when missing.
    Beside its weights, ``distillkit_teacher.json`` records the key's inputs and the weights' hashes."""
    root = cache_dir(cfg.cache_dir) / "teachers" / f"{cfg.model.name}-{sft_teacher_key(cfg)}"
    if (root / "config.json").is_file():
        return root
    with locked(root):
        if (root / "config.json").is_file():  # another job trained it while we waited
            return root
        log.info("training the %s teacher (SFT, cached at %s)", cfg.model.name, root)
        tcfg = teacher_sft_config(cfg)
        work = root.with_name(root.name + ".work")
        train(tcfg, out_dir=work, export_to=root, with_callbacks=False)
        remove_work_dir(work)
        atomic_write_json(
            root / TEACHER_RECORD,
            {"key": sft_teacher_key(cfg), "inputs": sft_teacher_inputs(cfg), "files": weight_hashes(root)},
        )
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
        last = out_dir / "checkpoints" / "last.ckpt"  # a folder of DCP shards under strategy=fsdp
        return str(last) if last.is_file() or is_sharded_checkpoint(last) else None
    return resume


# ----------------------------------------------------------------------------- resume check
#: dotted config keys that do not change the trained weights, left out of the training config a
#: checkpoint records (:func:`training_config`): where things are written or read from, what is
#: logged, how the result is evaluated (final evaluation, dev set, validation cadence), callbacks, and
#: the resume settings themselves. Everything else (model, data, method, trainer, strategy, seed,
#: layer map, span parser, on-policy data, stage) must match for ``resume=auto`` to continue a run.
RESUME_IGNORED = (
    "hydra",
    "output_dir",
    "cache_dir",
    "data.root",
    "logger",
    "tags",
    "experiment_name",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "eval",
    "final_eval",
    "export",
    "optimized_metric",
    "callbacks",
    "data.dev",
    "data.test",
    "data.max_dev_rows",
    "data.eval_batch_size",
    "data.num_workers",
    "data.pin_memory",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.limit_val_batches",
    "resume",
    "resume_accept_changes",
)


class ResumeMismatchError(ConfigError):
    """``resume`` found a checkpoint written by a different training config."""


def _drop_cache_dirs(tree: Any) -> None:
    if isinstance(tree, dict):
        tree.pop("cache_dir", None)
        for child in tree.values():
            _drop_cache_dirs(child)


def training_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`RESUME_IGNORED` and every ``cache_dir`` key at any depth (a
    method's interpolated cache location), as plain data (enums as values)."""
    out: dict[str, Any] = {}
    for key in cfg:
        if key in RESUME_IGNORED:
            continue
        out[str(key)] = _plain(cfg[key])
    for dotted in RESUME_IGNORED:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if parents and isinstance(node, dict):
            node.pop(leaf, None)
    _drop_cache_dirs(out)
    return out


def training_record(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint records of its config: ``{"config_hash", "config"}``."""
    config = training_config(cfg)
    return {"config_hash": stable_hash(config), "config": config}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        flat: dict[str, Any] = {}
        for k, v in tree.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1]: tree}


_ABSENT = "<absent>"


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs (``<absent>`` on the side missing it)."""
    a, b = _flatten(old), _flatten(new)
    return {
        k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted(set(a) | set(b))
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def checkpoint_record(ckpt_path: str | Path) -> dict[str, Any] | None:
    """The training record of a checkpoint: from ``train_config.json`` beside ``last.ckpt`` (no
    checkpoint load), else from the checkpoint itself (memory-mapped, tensors not read); ``None`` for
    a checkpoint written before records existed."""
    import json

    ckpt_path = Path(ckpt_path)
    beside = ckpt_path.parent / TRAIN_CONFIG_JSON
    if ckpt_path.name == "last.ckpt" and beside.is_file():
        return json.loads(beside.read_text())
    if is_sharded_checkpoint(ckpt_path):  # the non-tensor state of a sharded checkpoint is in meta.pt
        checkpoint = torch.load(str(ckpt_path / SHARDED_METADATA), map_location="cpu", weights_only=False)
    else:
        checkpoint = torch.load(str(ckpt_path), map_location="cpu", weights_only=False, mmap=True)
    return checkpoint.get("distillkit", {}).get("record")


def check_resume(cfg: DictConfig, ckpt_path: str | Path) -> dict[str, Any]:
    """Refuse to resume from a checkpoint of another training config (before anything expensive).

    Compares :func:`training_config` with the checkpoint's record and raises
    :class:`ResumeMismatchError` naming each differing key (``old -> new``) and the ways out, unless
    ``resume_accept_changes=true``; then the accepted changes are returned (and recorded in results.json).
    """
    record = checkpoint_record(ckpt_path)
    new = training_record(cfg)
    accept = bool(cfg.get("resume_accept_changes", False))
    info: dict[str, Any] = {"checkpoint": str(ckpt_path), "config_hash": new["config_hash"]}
    if record is not None and record.get("config_hash") == new["config_hash"]:
        log.info("resuming from %s (same training config %s)", ckpt_path, new["config_hash"])
        return info
    if record is None:
        what = "  (no training config recorded: the checkpoint predates these records)"
        changes: dict[str, tuple[Any, Any]] = {}
    else:
        changes = config_diff(record.get("config") or {}, new["config"])
        what = "\n".join(f"  {k}: {old!r} -> {new_!r}" for k, (old, new_) in changes.items())
    if accept:
        log.warning(
            "resuming from %s with changed training config (resume_accept_changes=true):\n%s", ckpt_path, what
        )
        info["accepted_changes"] = {k: {"old": o, "new": n} for k, (o, n) in changes.items()} or "unrecorded"
        return info
    raise ResumeMismatchError(
        f"resume={cfg.resume} found {ckpt_path}, written by a different training config:\n{what}\n"
        "Resuming would continue that run under this run's labels. Choose one:\n"
        "  - a new run folder: hydra.run.dir=<new folder> (or drop hydra.run.dir: every run gets a fresh one)\n"
        "  - start over in this folder: resume=never (its checkpoints are overwritten)\n"
        "  - continue that checkpoint with the new values: resume_accept_changes=true (recorded in results.json)"
    )


# ----------------------------------------------------------------------------- one training
def train(
    cfg: DictConfig, out_dir: Path, export_to: Path | None = None, with_callbacks: bool = True
) -> dict[str, Any]:
    """Fit one stage; returns a summary (metrics, models, datamodule) for the caller."""
    validate(cfg)
    ckpt_path = resume_path(cfg, out_dir)
    resumed = check_resume(cfg, ckpt_path) if ckpt_path else None  # before any weights or teacher SFT
    L.seed_everything(int(cfg.seed), workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = str(cfg.stage)
    # on-policy data (distillkit.data.onpolicy): distillation only; its settings were checked by validate
    onpolicy = cfg.get("onpolicy")
    use_onpolicy = stage == "distill" and onpolicy is not None and bool(onpolicy.enabled)
    # stage=teacher_sft fine-tunes the teacher alone: always plain SFT, whatever method is configured
    method = Method(SFT(), kd_rate=0.0) if stage == "teacher_sft" else build_method(cfg)

    # tokenizers and the cheap method checks come before any weights are loaded
    trainee_side = cfg.model.teacher if stage == "teacher_sft" else cfg.model.student
    trainee_role = "teacher" if stage == "teacher_sft" else "student"
    s_tok = load_tokenizer(trainee_side.tokenizer or trainee_side.path, trainee_role, cfg.cache_dir)
    teacher: LoadedModel | None = None
    weights: Path | None = None
    if stage == "distill" and method.needs_teacher_model:
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
            frozen=True,
            accelerator=cfg.strategy.accelerator,
        )
    # re-seed so the student's initialisation does not depend on whether the teacher was just trained
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    student = load_model(
        trainee_side, trainee_role, cfg.cache_dir, frozen=False, accelerator=cfg.strategy.accelerator
    )
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
        row_transforms=method.data_transforms(teacher, student),
    )
    dm.setup("fit")
    module = DistillModule(student, teacher, method, cfg.trainer.optim)
    extra_callbacks: list[Any] = [RunState(training_record(cfg))]
    if use_onpolicy:  # on-policy wiring: the source swaps batches in training_step and checkpoints its buffer
        from distillkit.data.onpolicy import StudentGeneratedData

        source = StudentGeneratedData.from_config(OmegaConf.to_container(onpolicy, resolve=True), dm)
        module.batch_source = source
        extra_callbacks.append(source)
    trainer = build_trainer(cfg, out_dir, with_callbacks=with_callbacks, extra_callbacks=extra_callbacks)
    started = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - started
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    exported = None
    if export_to is not None:
        trained = trained_student(trainer, module)  # every rank (a collective under strategy=fsdp)
        if trainer.is_global_zero:
            exported = export_student(trained, student.tokenizer, export_to)
    return {
        "metrics": metrics,
        "trainer": trainer,
        "module": module,
        "datamodule": dm,
        "student": student,
        "teacher": teacher,
        "teacher_path": str(weights) if weights is not None else None,
        "method": method,
        "resume": resumed,
        "exported": exported,
        "train_seconds": train_seconds,
    }


def trained_student(trainer: L.Trainer, module: DistillModule) -> Any:
    """The student to export and evaluate: ``module.student`` itself, or under ``strategy=fsdp`` a plain
    copy with the gathered full weights on rank 0 (``None`` on the other ranks; every rank must call it,
    :func:`distillkit.strategies.gather_full_model`). One export path for every strategy:
    :func:`~distillkit.models.pair.export_student` writes what this returns."""
    from distillkit.strategies import gather_full_model, is_fsdp2

    if not is_fsdp2(trainer.strategy):
        return module.student
    return gather_full_model(module.student, trainer.is_global_zero)


def restore_best_weights(trainer: L.Trainer, module: DistillModule) -> str | None:
    """Load the best checkpoint (by the checkpoint monitor) into the trained module before export and
    evaluation; its path, or ``None`` when there is none. Under ``strategy=fsdp`` the best checkpoint
    is a folder of shards, loaded by every rank (call it on every rank)."""
    from distillkit.strategies import is_fsdp2

    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", None) if ckpt is not None else None
    if not best:
        return None
    if is_fsdp2(trainer.strategy):
        if not is_sharded_checkpoint(best):
            return None
        trainer.strategy.load_weights(best)
        return best
    if not Path(best).is_file():
        return None
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state, strict=False)
    return best


# ----------------------------------------------------------------------------- provenance
def _git(*args: str, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, timeout=10, cwd=cwd or Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    out = _git("rev-parse", "HEAD", cwd=cwd)
    return (out.stdout.decode().strip() or None) if out is not None and out.returncode == 0 else None


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The code a run used: ``git_commit``, ``git_dirty`` (tracked changes or untracked files that
    git does not ignore), ``git_diff_sha256`` (sha256 of ``git diff HEAD``, binary-safe; ``None`` when
    there is none), ``git_untracked`` (how many untracked files). All ``None`` outside a git checkout.
    ``cwd``: a folder of the checkout (default: distillkit's own)."""
    commit = _git_commit(cwd)
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None, "git_untracked": None}
    import hashlib

    diff = _git("diff", "HEAD", "--binary", cwd=cwd)
    status = _git("status", "--porcelain", cwd=cwd)
    diff_bytes = diff.stdout if diff is not None and diff.returncode == 0 else b""
    lines = status.stdout.decode().splitlines() if status is not None and status.returncode == 0 else []
    untracked = sum(1 for line in lines if line.startswith("??"))
    return {
        "git_commit": commit,
        "git_dirty": bool(lines),
        "git_diff_sha256": hashlib.sha256(diff_bytes).hexdigest() if diff_bytes else None,
        "git_untracked": untracked,
    }


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
        "torchdata",
    ]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


#: the files of a model folder that decide its weights
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def cached_sha256(path: Path, cache: str | os.PathLike | None = None) -> str:
    """sha256 of a file, cached under ``<cache>/hashes`` by (absolute path, size, mtime): a teacher's
    multi-GB weights are read once, not at every run."""
    path = Path(path).resolve()
    st = path.stat()
    entry = cache_dir(cache) / "hashes" / stable_hash(str(path), st.st_size, st.st_mtime_ns)
    if entry.is_file():
        return entry.read_text().strip()
    digest = sha256_file(path)
    from distillkit.utils.io import atomic_write_text

    atomic_write_text(entry, digest + "\n")
    return digest


def weight_hashes(folder: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict[str, str]:
    """``{file name: sha256}`` of a model folder's ``config.json`` and weight files (:data:`WEIGHT_SUFFIXES`)."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    )
    return {p.name: cached_sha256(p, cache) for p in files}


def teacher_record(cfg: DictConfig, weights_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """Which teacher a run distilled from: its path and the hashes of its weight files.

    ``source``: ``sft_cache`` (the cached fine-tuned teacher, with its cache key), ``local`` (a model
    folder), ``hub`` (an HF id, hashed from the local HF cache when it is there) or ``random_init``."""
    if str(cfg.stage) != "distill":
        return None
    if weights_path is not None:
        root = Path(weights_path)
        record_file = root / TEACHER_RECORD
        if record_file.is_file():
            import json

            files = json.loads(record_file.read_text()).get("files") or weight_hashes(root, cfg.cache_dir)
        else:
            files = weight_hashes(root, cfg.cache_dir)
        return {"source": "sft_cache", "path": str(root), "key": sft_teacher_key(cfg), "files": files}
    side = cfg.model.teacher
    path = side.get("path")
    if value(side.init) == "random" or not path:
        return {"source": "random_init", "path": None, "arch": side.get("arch"), "files": {}}
    folder = Path(str(path)).expanduser()
    if folder.is_dir():
        return {
            "source": "local",
            "path": str(folder.resolve()),
            "files": weight_hashes(folder, cfg.cache_dir),
        }
    record: dict[str, Any] = {"source": "hub", "path": str(path), "files": {}}
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(str(path), local_files_only=True))
        record.update(snapshot=str(snapshot), files=weight_hashes(snapshot, cfg.cache_dir))
    except Exception as err:  # not in the local HF cache: the id is all there is
        record["files_missing"] = f"{type(err).__name__}: not in the local HF cache"
    return record


def eval_file_hashes(evaluation: dict[str, Any] | None) -> dict[str, str]:
    """``{set name: sha256}`` of every evaluation file the final evaluation read."""
    sets = (evaluation or {}).get("sets") or {}
    return {name: s["sha256"] for name, s in sets.items() if s.get("sha256")}


def provenance(
    cfg: DictConfig,
    dm: DistillDataModule,
    tokenizers: dict[str, Any],
    *,
    teacher_path: str | os.PathLike | None = None,
    evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a results.json needs to say what produced it: the code (:func:`git_state`), the
    data files read for training (``data_files``) and for the final evaluation (``eval_files``), the
    tokenizers, the teacher (:func:`teacher_record`) and the package versions."""
    files = {}
    root = cfg.data.get("root")
    if not root and value(cfg.data.source) == "jsonl":
        from distillkit.utils.io import data_root

        try:
            root = str(data_root())
        except FileNotFoundError:
            root = None
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
        **git_state(),
        "data_files": files,
        "eval_files": eval_file_hashes(evaluation),
        "tokenizers": tok_hashes,
        "teacher": teacher_record(cfg, teacher_path) if tokenizers.get("teacher") is not None else None,
        "versions": _versions(),
    }
