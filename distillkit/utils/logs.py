"""One console line per real event: the logging set-up of the command-line entry points.

* Lightning's ``lightning`` logger carries its own console handler *and* propagates to the root
  logger, where Hydra has installed its own: every Lightning INFO line is printed twice. Once the
  root logger has a handler (Hydra's), :func:`quiet_logging` removes Lightning's console handlers
  and lets its records propagate (one line, in Hydra's format and in the job's log file).
* Lightning's "💡 Tip: ... litlogger / litmodels" advertisements are filtered out.
* Hugging Face progress bars ("Loading weights", "Writing model shards", hub downloads) are off
  when no terminal is attached (logs, SLURM, CI), where each redraw would be a line of its own.
* Messages about nothing the user did or can change are dropped: Lightning's "Found N module(s) in
  eval mode" (the frozen teacher is in eval mode on purpose), its internal ``LeafSpec`` deprecation,
  and ``absl``'s "Using default tokenizer." from ``rouge_score`` on every evaluation.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: loggers that install their own console handler at import
_OWN_HANDLER_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class _DropTips(logging.Filter):
    """Drops Lightning's product tips ("💡 Tip: For seamless cloud ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIP_FILTER = _DropTips()


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stderr,
        sys.stdout,
    )


def quiet_logging(terminal: bool | None = None) -> None:
    """Set up the console for one line per event (idempotent). ``terminal``: whether a terminal is
    attached (default: ``isatty`` of stderr); without one, Hugging Face progress bars are off."""
    import lightning  # noqa: F401  (installs Lightning's handlers first, so they can be removed)

    root_has_handlers = bool(logging.getLogger().handlers)
    for name in _OWN_HANDLER_LOGGERS:
        logger = logging.getLogger(name)
        if root_has_handlers:
            for handler in [h for h in logger.handlers if _is_console(h)]:
                logger.removeHandler(handler)
            logger.propagate = True
    # rank_zero_info logs through this logger (and its ancestors' handlers)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if terminal is None:
        terminal = os.isatty(2)
    if not terminal:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers

        transformers.utils.logging.disable_progress_bar()
        try:
            from huggingface_hub.utils import disable_progress_bars
        except ImportError:  # pragma: no cover - always there with transformers
            return
        disable_progress_bars()
