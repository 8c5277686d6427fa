"""PNG bar charts for ablation tables: one bar per row (grouped by column), error bars = the cell's spread.

The error bar is the std over training seeds when there are several runs, else the single run's std
over generation seeds; a missing cell has no bar and is labelled "missing".
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distillkit.tables.aggregate import TableResult, column_label, tables_dir  # noqa: E402


def plot_table(result: TableResult, path: Path | None = None, columns: list[str] | None = None) -> Path:
    """Draw ``columns`` (default: the spec's ``plot`` columns, else ``avg``) of ``result`` to a PNG."""
    spec = result.spec
    columns = columns or spec.plot or [spec.columns[-1]]
    unknown = [c for c in columns if c not in spec.columns]
    if unknown:
        raise ValueError(f"Cannot plot columns {unknown}; table {spec.name!r} has {spec.columns}")
    path = Path(path) if path is not None else tables_dir(None, result.scale) / f"{spec.name}.png"
    labels = [r.label for r in spec.rows]
    x = np.arange(len(labels))
    width = 0.8 / len(columns)

    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.6), dpi=150)
    for k, column in enumerate(columns):
        cells = [result.cell(label, column) for label in labels]
        values = np.array([c.value if c.value is not None else np.nan for c in cells])
        errors = np.array(
            [c.std if c.std is not None else (c.gen_std if c.gen_std is not None else 0.0) for c in cells]
        )
        offset = (k - (len(columns) - 1) / 2) * width
        ax.bar(
            x + offset, np.nan_to_num(values), width, yerr=errors, capsize=3, label=column_label(spec, column)
        )
        for xi, value in zip(x + offset, values):
            if np.isnan(value):
                ax.text(xi, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ROUGE-L")
    ax.set_title(spec.title, fontsize=9)
    if len(columns) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # atomic, like every other output
    return path
