"""The main job: ``python -m distillkit.run [group=option ...] [key=value ...]``.

Composes the config (a typo or a bad choice fails here), trains (caching the teacher SFT when the
pair asks for it), exports the student with ``save_pretrained``, evaluates it with the ``eval``
protocol, and writes ``results.json`` atomically into the run folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from distillkit.config import value  # importing it registers the structured configs
from distillkit.utils.io import atomic_write_json

log = logging.getLogger("distillkit")


def _wandb_offline() -> bool:
    """W&B offline mode when no API key is configured (no account needed; `wandb sync` later)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    return not (os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").is_file())


if not OmegaConf.has_resolver("distillkit.wandb_offline"):
    OmegaConf.register_new_resolver("distillkit.wandb_offline", _wandb_offline)


def final_evaluation(
    cfg: DictConfig, model: Any, tokenizer: Any, dm: Any, out_dir: Path
) -> dict[str, Any] | None:
    """Evaluate on the ``eval`` protocol's sets; synthetic data evaluates on its own test split.

    The prompts use the template the student was trained with (``data.template``) unless
    ``eval.template`` is set; the result records which (``template``, ``template_source``)."""
    from distillkit.eval import evaluate
    from distillkit.eval.protocol import protocol_from_config

    protocol = protocol_from_config(cfg.get("eval"))
    if protocol is None or not cfg.final_eval:
        return None
    if value(cfg.data.source) == "synthetic":
        import json

        from distillkit.utils.io import atomic_write_text

        root = out_dir / "data"
        atomic_write_text(root / "test.jsonl", "".join(json.dumps(r) + "\n" for r in dm.rows.get("test", [])))
        protocol = protocol.replace(sets={"synthetic": "test.jsonl"})
    else:
        from distillkit.utils.io import data_root

        root = Path(cfg.data.root) if cfg.data.get("root") else data_root()
    return evaluate(
        model,
        tokenizer,
        protocol,
        root,
        out_dir,
        template=str(value(cfg.data.template)),
        template_source="data.template",
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from distillkit.checks import validate

    validate(cfg)  # before the heavy imports below (torch, Lightning): a bad value fails in seconds
    from distillkit.utils.logs import quiet_logging

    quiet_logging()  # one console line per event (imports Lightning)
    from distillkit.callbacks.ablation_logging import log_evaluation
    from distillkit.models.pair import export_student
    from distillkit.pipeline import provenance, restore_best_weights, train, trained_student

    out_dir = (
        Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.output_dir)
    )
    started = time.perf_counter()
    result = train(cfg, out_dir)
    trainer, module, dm = result["trainer"], result["module"], result["datamodule"]
    results: dict[str, Any] = {}
    # every rank: under strategy=fsdp both are collectives (a sharded load, a full-weight gather); the
    # student to export and evaluate is then a plain copy on rank 0
    best = restore_best_weights(trainer, module)
    student = trained_student(trainer, module)
    if trainer.is_global_zero:
        exported = None
        if cfg.export:
            name = "teacher" if str(cfg.stage) == "teacher_sft" else "student"
            exported = export_student(student, result["student"].tokenizer, out_dir / name)
        evaluation = final_evaluation(cfg, student, result["student"].tokenizer, dm, out_dir)
        log_evaluation(trainer, evaluation, out_dir)
        t, d = cfg.trainer, cfg.data
        world = trainer.world_size
        results = {
            "experiment": cfg.experiment_name,
            "stage": str(cfg.stage),
            "method": cfg.method.name,
            "model": cfg.model.name,
            "data": cfg.data.name,
            "seed": int(cfg.seed),
            "tags": {
                "method": cfg.method.name,
                "experiment": cfg.experiment_name,
                **(OmegaConf.to_container(cfg.tags, resolve=True) if cfg.get("tags") is not None else {}),
                **result["method"].tags(),
            },
            "metrics": result["metrics"],
            "eval": evaluation,
            "batch": {
                "per_device": d.batch_size,
                "accumulation": t.accumulate_grad_batches,
                "world_size": world,
                "effective": d.batch_size * t.accumulate_grad_batches * world,
            },
            "steps": int(trainer.global_step),
            "train_seconds": round(result["train_seconds"], 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "best_checkpoint": best,
            "resume": result.get("resume"),
            "templates": templates_used(cfg, trainer, evaluation),
            "exported": str(exported) if exported else None,
            "data_report": dm.report,
            "provenance": provenance(
                cfg,
                dm,
                {
                    "student": result["student"].tokenizer,
                    "teacher": result["teacher"].tokenizer if result["teacher"] else None,
                },
                teacher_path=result.get("teacher_path"),
                evaluation=evaluation,
            ),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        atomic_write_json(out_dir / "results.json", results)
        clear_markers(out_dir)
        print_summary(results, out_dir)
    return results


def print_summary(results: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distillkit: {results['method']} on {results['model']} ({results['data']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("train/loss", "val/loss", "val/rougeL"):
        if key in results["metrics"]:
            table.add_row(key, f"{results['metrics'][key]:.4f}")
    ev = results.get("eval") or {}
    if ev.get("template"):
        table.add_row("eval template", f"{ev['template']} ({ev.get('template_source', 'eval.template')})")
    for name, s in (ev.get("sets") or {}).items():
        table.add_row(
            f"test ROUGE-L {name}", "missing" if s.get("missing") else f"{s['mean']:.2f} ± {s['std']:.2f}"
        )
    table.add_row("steps", str(results["steps"]))
    table.add_row("train time (s)", f"{results['train_seconds']:.1f}")
    table.add_row("results", str(out_dir / "results.json"))
    Console(stderr=False, width=summary_width(table)).print(table)


def summary_width(table: Any, minimum: int = 80) -> int:
    """A console width that fits every cell of the two-column ``table`` on one line: rich cuts cells
    to the console width (80 columns without a terminal), which cut the results path."""
    from rich.console import Console

    cells = [[str(c) for c in col.cells] for col in table.columns]
    widest = [
        max([len(str(col.header))] + [len(c) for c in cells_]) for col, cells_ in zip(table.columns, cells)
    ]
    needed = sum(widest) + 3 * len(widest) + 1  # borders and one space of padding each side
    return max(minimum, needed, Console().width)


def templates_used(cfg: DictConfig, trainer: Any, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """The prompt template of training, of the dev ROUGE-L callback and of the final evaluation."""
    from distillkit.callbacks.dev_eval import DevRouge

    dev = next((c for c in trainer.callbacks if isinstance(c, DevRouge)), None)
    return {
        "train": str(value(cfg.data.template)),
        "dev_rouge": dev.used_template if dev is not None else None,
        "eval": (evaluation or {}).get("template"),
        "eval_source": (evaluation or {}).get("template_source"),
    }


#: the status markers a run folder can hold; a completed run removes both
FAILED_MARKER = "FAILED"


def _run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def clear_markers(out_dir: Path) -> None:
    """A completed run: no ``FAILED``/``PREEMPTED`` left from an earlier attempt in its folder."""
    from distillkit.callbacks.preemption import PREEMPTED_MARKER

    for name in (FAILED_MARKER, PREEMPTED_MARKER):
        (out_dir / name).unlink(missing_ok=True)


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    import traceback

    from distillkit.callbacks.preemption import PREEMPTED_MARKER
    from distillkit.pipeline import ResumeMismatchError
    from distillkit.utils.io import atomic_write_text

    out_dir = _run_dir()
    if out_dir is None or isinstance(err, ResumeMismatchError):
        return  # a refused resume leaves the folder as its own run left it (finished, preempted, ...)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    atomic_write_text(out_dir / FAILED_MARKER, text)
    (out_dir / PREEMPTED_MARKER).unlink(missing_ok=True)


def _record_preemption(err: BaseException) -> None:
    """``PREEMPTED`` (instead of ``FAILED``): the signal, the step and the checkpoint to resume from."""
    import datetime
    import json

    from distillkit.callbacks.preemption import PREEMPTED_MARKER
    from distillkit.utils.io import atomic_write_text

    out_dir = _run_dir()
    if out_dir is None:
        return
    info = getattr(err, "preemption", None)
    record = {
        "signal": getattr(info, "signal", None),
        "step": getattr(info, "step", None),
        "checkpoint": getattr(info, "checkpoint", None),
        "requeued": bool(getattr(info, "requeue", None)),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "resume": "run the same command again (resume=auto continues from the checkpoint)",
    }
    atomic_write_text(out_dir / PREEMPTED_MARKER, json.dumps(record, indent=2) + "\n")
    (out_dir / FAILED_MARKER).unlink(missing_ok=True)


def _stop_preempted(err: BaseException) -> None:
    """After a stop signal: mark the folder, requeue where the launcher can (submitit), else exit
    with :data:`~distillkit.callbacks.preemption.EXIT_PREEMPTED`."""
    from distillkit.callbacks.preemption import EXIT_PREEMPTED

    _record_preemption(err)
    requeue = getattr(getattr(err, "preemption", None), "requeue", None)
    if requeue is not None:
        log.warning("preempted: handing over to submitit, which requeues this job")
        requeue()  # submitit requeues the job and exits
    log.warning("preempted: exiting with status %d (resume with the same command)", EXIT_PREEMPTED)
    raise SystemExit(EXIT_PREEMPTED) from None


def _task(cfg: DictConfig) -> float | None:
    """The Hydra task: never leaves a W&B run open (multirun jobs stay separate, wandb #1314)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        results = run(cfg)
    except SIGTERMException as err:  # a SystemExit(None): exit 0 unless we say otherwise
        _stop_preempted(err)
        raise
    except BaseException as err:
        # a failing job of a multirun is recorded in its folder; Hydra goes on with the others
        _record_failure(cfg, err)
        _raise_for_hydra(err)
    finally:
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()
    metric = cfg.get("optimized_metric")
    value = (results.get("metrics") or {}).get(metric) if metric else None
    return float(value) if value is not None else None


def _raise_for_hydra(err: BaseException) -> None:
    """Re-raise ``err`` for Hydra: a user error (:mod:`distillkit.errors`) as one line without a
    traceback (exit status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback), anything else as is."""
    from distillkit.errors import reported

    out = reported(err)
    if out is err:
        raise err
    raise out from err


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return _task(cfg)


if __name__ == "__main__":
    main()
