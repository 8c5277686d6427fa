"""The run's CSV logger, which also draws the run's own training curves when training ends.

:class:`CSVLogger` is Lightning's ``CSVLogger`` (``<run dir>/csv/metrics.csv``) whose ``finalize``
(called by Lightning at the end of ``fit``: success, failure or preemption) also writes
``curves.png`` next to ``metrics.csv`` with :func:`plot_training_curves`: one small panel each for
the training loss terms, the validation loss terms, the learning rate(s), tokens/s and the dev
ROUGE-L, against the optimizer step. Researchers look at curves before numbers.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from distillkit.utils.io import atomic_write_bytes

log = logging.getLogger("distillkit")

CURVES_FILE = "curves.png"


def _panel(column: str) -> str | None:
    """The panel a ``metrics.csv`` column is drawn in (None: not drawn)."""
    if column in ("epoch", "step") or column.startswith("test/"):
        return None
    if column == "train/tokens_per_s":
        return "tokens/s"
    if column == "val/rougeL":
        return "dev ROUGE-L"
    if column.startswith("lr-"):
        return "learning rate"
    if column.startswith("train/"):
        return "train loss terms"
    if column.startswith("val/"):
        return "val loss terms"
    return None


PANELS = ("train loss terms", "val loss terms", "learning rate", "tokens/s", "dev ROUGE-L")


def read_metrics(csv_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Column -> ``[(step, value), ...]`` of the non-empty, finite cells of Lightning's ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            for column, cell in row.items():
                if column in ("epoch", "step") or cell in (None, ""):
                    continue
                try:
                    v = float(cell)
                except ValueError:
                    continue
                if math.isfinite(v):
                    series.setdefault(column, []).append((step, v))
    return series


def plot_training_curves(csv_path: str | Path, png_path: str | Path | None = None) -> dict[str, list[str]]:
    """Draw ``curves.png`` (next to ``csv_path`` unless ``png_path``) from Lightning's ``metrics.csv``.

    Returns panel title -> the columns drawn in it (empty when the file has no metric yet: then no
    image is written). Matplotlib's ``Agg`` backend: no display needed; written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display, no pyplot state
    from matplotlib.figure import Figure

    series = read_metrics(csv_path)
    panels: dict[str, list[str]] = {}
    for column in sorted(series):
        name = _panel(column)
        if name is not None:
            panels.setdefault(name, []).append(column)
    panels = {name: panels[name] for name in PANELS if name in panels}
    if not panels:
        return {}
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 2.8 * nrows), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, columns) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for column in columns:
            points = sorted(series[column])
            steps, values = [p[0] for p in points], [p[1] for p in points]
            ax.plot(steps, values, marker="." if len(points) < 20 else None, linewidth=1.2, label=column)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(columns) > 1 or name.endswith("terms"):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(png_path) if png_path is not None else Path(csv_path).with_name(CURVES_FILE)
    atomic_write_bytes(out, buf.getvalue())
    return panels


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger; at ``finalize`` it also writes ``curves.png`` beside ``metrics.csv``."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        metrics = Path(self.log_dir) / "metrics.csv"
        if not metrics.is_file():
            return
        try:
            plot_training_curves(metrics)
        except Exception as err:  # a plot must never fail a finished run
            log.warning("could not draw %s: %s: %s", metrics.with_name(CURVES_FILE), type(err).__name__, err)
