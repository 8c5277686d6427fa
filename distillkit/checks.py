"""The checks of a run config that need no weights and no data preparation.

:func:`validate` runs first in :func:`distillkit.pipeline.train` and, in ``python -m distillkit.run``,
before the heavy imports (torch, Lightning), so a bad value fails in seconds: before any teacher SFT,
weight load or data preparation. It imports only the config, the error classes, ``transformers``'
config classes (for the depths) and the file helpers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillkit.config import value
from distillkit.errors import ConfigError, DataError

#: the ``model.<role>.tokenizer`` prefix of tokenizers distillkit trains itself (models/pair.py)
TINY_PREFIX = "tiny:"


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
    from distillkit.strategies import is_sharded_checkpoint, validate_strategy

    if resume not in ("auto", "never") and not (Path(resume).is_file() or is_sharded_checkpoint(resume)):
        raise ConfigError(
            f"resume={resume!r} is neither auto, never, an existing checkpoint file nor a sharded checkpoint "
            "folder (strategy=fsdp: a folder with meta.pt)"
        )
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
    validate_strategy(cfg)  # the sharded strategies' options (block classes, devices, offload, dtypes)
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
    _check(
        "data.num_workers",
        d.num_workers,
        d.num_workers is None or d.num_workers >= 0,
        "null (auto) or an integer >= 0",
    )
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


def _roles_with_weights(cfg: DictConfig) -> tuple[str, ...]:
    """The sides whose weights this run loads: the trainee, and the teacher of a distillation
    unless the method is ``sft`` (the one method without a teacher forward)."""
    if str(cfg.stage) == "teacher_sft":
        return ("teacher",)
    return ("student",) if cfg.method.get("name") == "sft" else ("teacher", "student")


def _validate_model_paths(cfg: DictConfig) -> None:
    """Each pretrained side's ``config.json`` is readable (a local folder, or an HF id in the cache or
    reachable): a missing path fails here, not after a teacher SFT. Paths written as local paths must
    be folders (never HF's repo-id message), for tokenizers too."""
    from distillkit.models.depth import check_model_path, model_depth

    for role in _roles_with_weights(cfg):
        side = cfg.model[role]
        if side.tokenizer and not str(side.tokenizer).startswith(TINY_PREFIX):
            check_model_path(str(side.tokenizer), f"model.{role}.tokenizer", "tokenizer")
        if value(side.init) == "pretrained":
            model_depth(side, role)  # reads config.json only; raises ModelLoadError naming the key


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
