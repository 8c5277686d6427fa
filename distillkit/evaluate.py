"""Evaluate any Hugging Face causal LM (a teacher, an exported student, a training checkpoint).

    python -m distillkit.evaluate model_path=PATH [eval=dskd|mta|smoke|dev] [tokenizer_path=PATH]
        [data_root=PATH] [device=auto|cpu|cuda] [dtype=auto|float32|bfloat16|float16] [out_dir=DIR]

``model_path`` is either

* an HF model folder (``config.json`` + weights), e.g. ``<run_dir>/student`` or a teacher, or
* a Lightning ``.ckpt`` of a distillkit run: the architecture and tokenizer come from the exported
  student folder of that run (``<run_dir>/student``, looked up beside the checkpoint and one level up,
  since checkpoints live in ``<run_dir>/checkpoints/``), and the checkpoint's ``student.*`` weights are
  loaded into it, so an intermediate checkpoint can be scored. Only load checkpoints you trust
  (they are pickles).

Writes ``<out_dir>/eval_results.json`` (atomically) and ``<out_dir>/predictions/<set>.jsonl``, and
prints a table. ``out_dir`` is also Hydra's run folder (its ``.hydra/`` and log go there); without it,
``outputs/evaluate/<date>/<time>/``. A user error (a missing model or data folder, a bad choice)
prints one line and exits 1 (``HYDRA_FULL_ERROR=1``: the traceback).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from distillkit.config import EvalDType  # importing it registers the structured configs
from distillkit.errors import ConfigError, DataError, ModelLoadError
from distillkit.eval.protocol import protocol_from_config
from distillkit.models.depth import check_model_path
from distillkit.utils.io import atomic_write_json

DTYPES = tuple(d.value for d in EvalDType)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
STUDENT_PREFIX = "student."


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other values are checked and returned."""
    import torch

    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; valid: {', '.join(DEVICES)}")
    if not (device in ("cpu", "mps") or device.startswith("cuda")):
        raise ConfigError(f"Unknown device {device!r}; valid: {', '.join(DEVICES)}")
    return device


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    dtype = str(dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if dtype == "auto":  # bf16 on a GPU that has it, else fp32 (generation also autocasts on CUDA)
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, dtype)


def exported_student_dir(ckpt: Path) -> Path:
    """The run's exported student folder for a ``.ckpt`` (beside it, or one level up)."""
    candidates = [ckpt.parent / "student", ckpt.parent.parent / "student"]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise ModelLoadError(
        f"{ckpt} is a Lightning checkpoint, but no exported HF student was found at "
        f"{' or '.join(str(c) for c in candidates)}; export the student (run with export=true) "
        "or pass model_path=<an HF model folder>."
    )


def student_state_dict(checkpoint: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """The student's weights in a Lightning checkpoint, renamed to the HF model's keys.

    The prefix is found by matching: the part before a model key in ``student.*`` entries
    (``student.`` for ``DistillModule.student = <HF model>``, but ``student.model.`` etc. work too).
    """
    state = checkpoint.get("state_dict", checkpoint)
    prefixes: Counter[str] = Counter()
    for key in state:
        if not key.startswith(STUDENT_PREFIX):
            continue
        for model_key in model_keys:
            if key.endswith(model_key) and (len(key) == len(model_key) or key[-len(model_key) - 1] == "."):
                prefixes[key[: len(key) - len(model_key)]] += 1
    if not prefixes:
        sample = list(state)[:5]
        raise ModelLoadError(
            f"The checkpoint has no '{STUDENT_PREFIX}*' weights matching the exported model (first keys: {sample})."
        )
    prefix = prefixes.most_common(1)[0][0]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_model(model_path: str | Path, device: str, dtype: str = "auto") -> tuple[Any, Path]:
    """The model, in eval mode on ``device``, and the folder its tokenizer defaults to."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model_path {str(path)!r} does not exist (an HF model folder or a .ckpt).")
    torch_dtype = _torch_dtype(dtype, device)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model_path {str(path)!r} is a folder without config.json: not an HF model folder."
            )
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        hf_dir = path
    elif path.suffix == ".ckpt":
        hf_dir = exported_student_dir(path)
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch_dtype)
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)
        weights = student_state_dict(checkpoint, set(model.state_dict()))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ModelLoadError(
                f"{path}: the student weights do not fit {hf_dir}: missing {sorted(set(missing) - tied)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}."
            )
    else:
        raise ModelLoadError(
            f"model_path {str(path)!r} is a file but not a .ckpt; give an HF model folder or a .ckpt."
        )
    return model.to(device).eval(), hf_dir


def training_template(model_dir: Path) -> tuple[str, str] | None:
    """``(data.template, where it was read)`` of the run that exported ``model_dir`` (``<run>/student``):
    from the run's ``results.json``, ``checkpoints/train_config.json`` or ``.hydra/config.yaml``;
    ``None`` for a model that is not a distillkit run's (then the protocol's default applies)."""
    import json

    run = Path(model_dir).parent
    for rel in ("results.json", "checkpoints/train_config.json"):
        path = run / rel
        try:
            data = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            data = None
        template = ((data or {}).get("config") or {}).get("data", {}).get("template")
        if template:
            return str(template), f"data.template of {path}"
    hydra_cfg = run / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        template = OmegaConf.select(OmegaConf.load(hydra_cfg), "data.template")
        if template:
            return str(template), f"data.template of {hydra_cfg}"
    return None


def print_results(results: dict[str, Any], title: str) -> None:
    """A rich table: one line per set (per-seed scores, mean, std over generation seeds)."""
    from rich.console import Console
    from rich.table import Table

    seeds = [str(s) for s in results.get("protocol_config", {}).get("seeds", [])]
    table = Table(title=title)
    table.add_column("set")
    for seed in seeds:
        table.add_column(f"seed {seed}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("std (gen. seeds)", justify="right")
    table.add_column("prompts", justify="right")
    for name, entry in results["sets"].items():
        if entry.get("missing"):
            table.add_row(name, *["—"] * len(seeds), "[red]missing[/red]", "", entry.get("path", ""))
            continue
        std = "" if entry["std"] is None else f"{entry['std']:.2f}"
        per_seed = [f"{entry['seeds'].get(s, float('nan')):.2f}" for s in seeds]
        table.add_row(name, *per_seed, f"{entry['mean']:.2f}", std, str(entry["n_prompts"]))
    avg = results.get("avg")
    note = f" (missing: {', '.join(results['missing_sets'])})" if results.get("missing_sets") else ""
    table.add_row(
        "[bold]avg[/bold]", *[""] * len(seeds), "—" if avg is None else f"[bold]{avg:.2f}[/bold]", note, ""
    )
    Console().print(table)


def run_evaluation(cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Check the inputs, load the model, evaluate, write ``eval_results.json``; the written dict."""
    from transformers import AutoTokenizer

    from distillkit.eval import evaluate

    if OmegaConf.is_missing(cfg, "model_path") or not cfg.get("model_path"):
        raise ConfigError(
            "Give model_path=<an HF model folder or a .ckpt> (python -m distillkit.evaluate model_path=...)."
        )
    try:
        protocol = protocol_from_config(cfg.eval)
    except ValueError as err:  # EvalProtocol names the bad field and its valid range
        raise ConfigError(str(err)) from err
    if protocol is None:
        raise ConfigError("eval=none: there is nothing to evaluate; pick eval=dskd|mta|smoke|dev.")
    if cfg.get("batch_size"):
        protocol = protocol.replace(batch_size=int(cfg.batch_size))
    model_path = Path(str(cfg.model_path)).expanduser()
    if not model_path.exists():
        raise ModelLoadError(
            f"model_path {str(model_path)!r} does not exist (an HF model folder or a .ckpt)."
        )
    if not cfg.get("data_root"):
        raise DataError("No data root: pass data_root=PATH or set $DISTILLKIT_DATA_ROOT.")
    data_root = Path(str(cfg.data_root)).expanduser()
    if not data_root.is_dir():
        raise DataError(f"data_root {str(data_root)!r} is not a folder.")
    device = resolve_device(str(cfg.get("device", "auto")))

    dtype = str(cfg.get("dtype", "auto"))
    _torch_dtype(dtype, device)  # a bad dtype fails before the weights load
    tokenizer_path = Path(str(cfg.tokenizer_path)).expanduser() if cfg.get("tokenizer_path") else None
    if tokenizer_path is not None:
        check_model_path(str(cfg.tokenizer_path), "tokenizer_path", "tokenizer")
    model, hf_dir = load_model(model_path, device, dtype)
    tokenizer_path = tokenizer_path or hf_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load the tokenizer from {str(tokenizer_path)!r}: {err}") from err
    out_dir = Path(out_dir)
    trained = training_template(hf_dir)  # the template the model was trained with, unless eval.template
    template, source = trained if trained is not None else (None, "default")
    results = evaluate(
        model,
        tokenizer,
        protocol,
        data_root,
        out_dir,
        device=device,
        template=template,
        template_source=source,
    )
    record = {
        "model_path": str(model_path),
        "tokenizer_path": str(tokenizer_path),
        "device": device,
        "data_root": str(data_root),
        "eval": results,
    }
    atomic_write_json(out_dir / "eval_results.json", record)
    print_results(results, f"ROUGE-L, protocol {protocol.name}, template {results['template']}: {model_path}")
    print(f"wrote {out_dir / 'eval_results.json'}")
    return record


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from distillkit.errors import reported
    from distillkit.utils.logs import quiet_logging

    quiet_logging()
    out_dir = cfg.get("out_dir") or HydraConfig.get().runtime.output_dir
    try:
        run_evaluation(cfg, out_dir)
    except Exception as err:  # a user error as one line; anything else keeps its traceback
        out = reported(err)
        if out is err:
            raise
        raise out from err


if __name__ == "__main__":
    main()
