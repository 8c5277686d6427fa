"""Results of a table's runs -> one table in Markdown, LaTeX (booktabs) and JSON.

A run's ``results.json`` (written by ``python -m distillkit.run``)::

    {"experiment": "...", "method": "mta", "model": "...", "seed": 42, "tags": {...}, "config": {...},
     "metrics": {"val/rougeL": 12.3, ...},
     "eval": {"protocol": "dskd",
              "sets": {"dolly": {"seeds": {"10": 24.1, ...}, "mean": 24.0, "std": 0.3, "n_prompts": 500,
                                 "missing": false},
                       "uinst": {"missing": true, "path": "uinst/11_/valid.jsonl"}},
              "avg": 18.2, "missing_sets": ["uinst"]}}

A cell is the mean ± sample std over training seeds of the runs' per-set means (the mean over
generation seeds). With a single run the spread over generation seeds is shown instead, in
parentheses. The ``avg`` column is recomputed from the table's own set columns, so it is defined only
when every one of them is available. Anything absent (a run not run, failed, a set not available) is
a marked empty cell with a footnote; no value is ever filled in by hand.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.tables.spec import AVG, RESULTS_ROOT, RunPlan, TableSpec, plan_runs
from distillkit.utils.io import atomic_write_json, atomic_write_text

MISSING_MARK = "—"

# Footnote kinds, in the order their letters are assigned; when the runs of a cell disagree, the
# first kind in this order is shown (a failure says more than a run not started).
FOOTNOTES: dict[str, str] = {
    "run_failed": "run failed (see FAILED in its run folder)",
    "unreadable": "results.json could not be read",
    "run_missing": "run not found (no results.json yet)",
    "no_eval": "the run has no evaluation results",
    "set_missing": "set not available (absent from the data root when the run was evaluated)",
    "avg_incomplete": "average undefined: a set of this table is not available",
    "partial": "fewer training seeds than planned",
}

DEFAULT_COLUMN_LABELS = {
    "dolly": "Dolly",
    "self-inst": "SelfInst",
    "vicuna": "Vicuna",
    "sinst": "S-NI",
    "uinst": "UnNI",
    "dev": "Dev",
    AVG: "Avg",
}


@dataclass
class Cell:
    """One row x column entry."""

    value: float | None = None  # mean over training runs
    std: float | None = None  # sample std over training runs (two runs or more)
    gen_std: float | None = None  # one run: std over its generation seeds
    n: int = 0  # runs that gave a value
    expected: int = 0  # training seeds planned
    notes: list[str] = field(default_factory=list)  # FOOTNOTES keys
    values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "std": self.std,
            "gen_std": self.gen_std,
            "n": self.n,
            "expected": self.expected,
            "notes": self.notes,
            "values": self.values,
        }


@dataclass
class TableResult:
    spec: TableSpec
    scale: str
    cells: dict[tuple[str, str], Cell]
    protocols: list[str]
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, row: str, column: str) -> Cell:
        return self.cells[(row, column)]


# ----------------------------------------------------------------------------------------------
# reading runs


def load_results(path: Path) -> dict[str, Any] | None:
    """A run's results, ``None`` when the file does not exist; ``ValueError`` when unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def run_value(
    results: dict[str, Any], column: str, set_columns: Sequence[str]
) -> tuple[float | None, float | None, str | None]:
    """``(value, generation-seed std, reason when there is no value)`` of one run for one column."""
    ev = results.get("eval") or {}
    sets = ev.get("sets") or {}
    if not sets:
        return None, None, "no_eval"

    def present(name: str) -> dict[str, Any] | None:
        entry = sets.get(name)
        if not entry or entry.get("missing") or entry.get("mean") is None:
            return None
        return entry

    if column != AVG:
        entry = present(column)
        if entry is None:
            return None, None, "set_missing"
        # a spread over generation seeds exists only with two seeds or more (one seed reports std 0.0)
        gen_std = entry.get("std") if len(entry.get("seeds") or {}) > 1 else None
        return float(entry["mean"]), gen_std, None

    if not set_columns:  # a table with only an avg column: the run's own average over its sets
        if ev.get("missing_sets") or ev.get("avg") is None:
            return None, None, "avg_incomplete"
        return float(ev["avg"]), None, None
    entries = [present(name) for name in set_columns]
    if any(e is None for e in entries):
        return None, None, "avg_incomplete"
    value = statistics.fmean(float(e["mean"]) for e in entries)
    # spread over generation seeds of the per-seed average over sets (when every set has the same seeds)
    seed_keys = [set((e.get("seeds") or {}).keys()) for e in entries]
    gen_std = None
    if seed_keys and all(k == seed_keys[0] for k in seed_keys) and len(seed_keys[0]) > 1:
        per_seed = [statistics.fmean(float(e["seeds"][s]) for e in entries) for s in sorted(seed_keys[0])]
        gen_std = _std(per_seed)
    return value, gen_std, None


def aggregate_table(spec: TableSpec, scale: str, results_root: Path | None = None) -> TableResult:
    """Read every run of ``spec`` at ``scale`` and fill each cell (see the module docstring)."""
    plans = plan_runs(spec, scale, results_root)
    by_row: dict[str, list[RunPlan]] = {}
    for plan in plans:
        by_row.setdefault(plan.row, []).append(plan)

    loaded: dict[Path, dict[str, Any] | str] = {}  # run dir -> results, or a status string
    protocols: set[str] = set()
    for plan in plans:
        try:
            results = load_results(plan.results_path)
        except ValueError:
            loaded[plan.run_dir] = "unreadable"
            continue
        if results is None:
            loaded[plan.run_dir] = "run_failed" if plan.failed_path.is_file() else "run_missing"
        else:
            loaded[plan.run_dir] = results
            protocol = (results.get("eval") or {}).get("protocol")
            if protocol:
                protocols.add(str(protocol))

    cells: dict[tuple[str, str], Cell] = {}
    for row in spec.rows:
        row_plans = by_row[row.label]
        for column in spec.columns:
            cell = Cell(expected=len(row_plans))
            run_reasons: list[str] = []  # runs without readable results
            value_reasons: list[str] = []  # runs with results but no value for this column
            gen_stds: list[float | None] = []
            for plan in row_plans:
                results = loaded[plan.run_dir]
                if isinstance(results, str):
                    run_reasons.append(results)
                    continue
                value, gen_std, reason = run_value(results, column, spec.set_columns)
                if value is None:
                    value_reasons.append(reason or "no_eval")
                else:
                    cell.values.append(value)
                    gen_stds.append(gen_std)
            cell.n = len(cell.values)
            if cell.values:
                cell.value = statistics.fmean(cell.values)
                cell.std = _std(cell.values)
                cell.gen_std = gen_stds[0] if cell.n == 1 else None
                if cell.n < cell.expected:
                    cell.notes.append("partial")
            else:
                # what the runs that exist say comes first; a run-level reason only when none exists
                reasons = value_reasons or run_reasons
                cell.notes.append(min(set(reasons), key=list(FOOTNOTES).index))
            cells[(row.label, column)] = cell
    result = TableResult(spec=spec, scale=scale, cells=cells, protocols=sorted(protocols))
    for row_a, row_b in spec.compare:
        try:
            result.comparisons.append(compare_rows(spec, scale, row_a, row_b, results_root))
        except ValueError as err:  # e.g. the rows were evaluated on different prompts
            result.comparisons.append({"a": row_a, "b": row_b, "error": str(err), "sets": {}})
    return result


# ----------------------------------------------------------------------------------------------
# significance


def paired_bootstrap(
    scores_a: Sequence[float], scores_b: Sequence[float], n: int = 1000, seed: int = 0
) -> float:
    """Paired bootstrap test (Koehn 2004) that system A scores higher than system B on the same items.

    Resamples the items with replacement ``n`` times; the p-value is the share of resamples in which
    A's mean is NOT above B's (so identical systems give 1.0 and a clearly better A gives about 0).
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired_bootstrap needs two 1-D score lists of equal length; got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise ValueError("paired_bootstrap needs at least one paired item")
    if n < 1:
        raise ValueError(f"paired_bootstrap: n={n}; must be >= 1")
    diffs = a - b
    rng = np.random.default_rng(seed)
    not_better = 0
    for start in range(0, n, 256):  # chunks keep memory small for 10k-item sets
        k = min(256, n - start)
        idx = rng.integers(0, diffs.size, size=(k, diffs.size))
        not_better += int((diffs[idx].mean(axis=1) <= 0).sum())
    return not_better / n


def prompt_scores(run_dir: Path, set_name: str) -> dict[int, tuple[str, float]] | None:
    """Per prompt index: (prompt, mean ROUGE-L over generation seeds), from ``predictions/<set>.jsonl``."""
    path = Path(run_dir) / "predictions" / f"{set_name}.jsonl"
    if not path.is_file():
        return None
    by_index: dict[int, list[float]] = {}
    prompts: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                by_index.setdefault(int(rec["index"]), []).append(float(rec["score"]))
                prompts[int(rec["index"])] = rec.get("prompt", "")
    return {i: (prompts[i], statistics.fmean(v)) for i, v in by_index.items()}


def _row_prompt_scores(plans: list[RunPlan], set_name: str) -> dict[int, tuple[str, float]] | None:
    """Per prompt: the mean over a row's training runs (runs without predictions are skipped)."""
    per_run = [s for s in (prompt_scores(p.run_dir, set_name) for p in plans) if s is not None]
    if not per_run:
        return None
    common = set.intersection(*(set(s) for s in per_run))
    return {i: (per_run[0][i][0], statistics.fmean(s[i][1] for s in per_run)) for i in sorted(common)}


def compare_rows(
    spec: TableSpec,
    scale: str,
    row_a: str,
    row_b: str,
    results_root: Path | None = None,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of row A against row B on each set column, on the prompts both evaluated."""
    for label in (row_a, row_b):
        spec.row(label)  # raises, listing the rows, for an unknown label
    plans = plan_runs(spec, scale, results_root)
    plans_a = [p for p in plans if p.row == row_a]
    plans_b = [p for p in plans if p.row == row_b]
    out: dict[str, Any] = {"a": row_a, "b": row_b, "n_resamples": n, "sets": {}}
    for set_name in spec.set_columns:
        sa, sb = _row_prompt_scores(plans_a, set_name), _row_prompt_scores(plans_b, set_name)
        if sa is None or sb is None:
            out["sets"][set_name] = {"missing": True}
            continue
        common = sorted(set(sa) & set(sb))
        differ = [i for i in common if sa[i][0] != sb[i][0]]
        if differ:
            raise ValueError(
                f"{spec.name}: rows {row_a!r} and {row_b!r} have different prompts at indices {differ[:5]} "
                f"of set {set_name!r}; a paired test needs the same prompts."
            )
        if not common:
            out["sets"][set_name] = {"missing": True}
            continue
        a = [sa[i][1] for i in common]
        b = [sb[i][1] for i in common]
        out["sets"][set_name] = {
            "missing": False,
            "n_prompts": len(common),
            "mean_a": statistics.fmean(a),
            "mean_b": statistics.fmean(b),
            "p_value": paired_bootstrap(a, b, n=n, seed=seed),
        }
    return out


# ----------------------------------------------------------------------------------------------
# rendering


def _footnote_letters(result: TableResult) -> dict[str, str]:
    used = {note for cell in result.cells.values() for note in cell.notes}
    kinds = [k for k in FOOTNOTES if k in used]
    return {k: "abcdefghij"[i] for i, k in enumerate(kinds)}


def _best(result: TableResult, column: str) -> float | None:
    values = [result.cell(r.label, column).value for r in result.spec.rows]
    values = [v for v in values if v is not None]
    return max(values) if len(values) > 1 else None


def column_label(spec: TableSpec, column: str) -> str:
    return spec.column_labels.get(column) or DEFAULT_COLUMN_LABELS.get(column, column)


def format_cell(cell: Cell, latex: bool = False) -> str:
    """``24.01 ± 0.30`` (training seeds), ``24.01 (± 0.30)`` (one run, generation seeds), or the mark."""
    pm = r"$\pm$" if latex else "±"
    if cell.value is None:
        return "--" if latex else MISSING_MARK
    text = f"{cell.value:.2f}"
    if cell.std is not None:
        text += f" {pm} {cell.std:.2f}"
    elif cell.gen_std is not None:
        text += f" ({pm} {cell.gen_std:.2f})"
    return text


def _notes(result: TableResult, letters: dict[str, str]) -> list[tuple[str | None, str]]:
    """The lines under a table: ``(footnote letter or None, text)``."""
    notes: list[tuple[str | None, str]] = [
        (
            None,
            f"Scale: {result.scale}. Cells: mean ± sample std over training seeds; mean (± std) for a single "
            "training run, std over its generation seeds. Bold: best in column.",
        )
    ]
    if result.protocols:
        notes.append((None, f"Evaluation protocol: {', '.join(result.protocols)}."))
    row_order = [r.label for r in result.spec.rows]
    for kind, letter in letters.items():
        rows = [
            label
            for label in row_order
            if any(kind in result.cell(label, c).notes for c in result.spec.columns)
        ]
        notes.append((letter, f"{FOOTNOTES[kind]}: {', '.join(rows)}."))
    for comp in result.comparisons:
        if comp.get("error"):
            notes.append((None, f"Paired bootstrap {comp['a']} vs {comp['b']} not possible: {comp['error']}"))
            continue
        parts = []
        for set_name, res in comp["sets"].items():
            if res.get("missing"):
                parts.append(f"{set_name} n/a")
            else:
                parts.append(
                    f"{set_name} p={res['p_value']:.3f} ({res['mean_a']:.2f} vs {res['mean_b']:.2f})"
                )
        notes.append(
            (
                None,
                f"Paired bootstrap ({comp['n_resamples']} resamples), {comp['a']} vs {comp['b']}: "
                + "; ".join(parts)
                + " (p: share of resamples where the first row does not score higher).",
            )
        )
    return notes


def to_markdown(result: TableResult) -> str:
    spec = result.spec
    letters = _footnote_letters(result)
    header = ["Method", *(column_label(spec, c) for c in spec.columns)]
    lines = [f"## {spec.title}", ""]
    if spec.caption:
        lines += [spec.caption, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" + "---:|" * len(spec.columns))
    best = {c: _best(result, c) for c in spec.columns}
    for row in spec.rows:
        cells = []
        for column in spec.columns:
            cell = result.cell(row.label, column)
            text = format_cell(cell)
            if cell.value is not None and best[column] is not None and cell.value == best[column]:
                text = f"**{text}**"
            text += "".join(f"[{letters[n]}]" for n in cell.notes)
            cells.append(text)
        lines.append("| " + " | ".join([row.label.replace("|", "\\|"), *cells]) + " |")
    lines.append("")
    lines += [(f"[{letter}] " if letter else "") + text + "  " for letter, text in _notes(result, letters)]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "±": r"$\pm$",
    "—": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(result: TableResult) -> str:
    spec = result.spec
    letters = _footnote_letters(result)
    best = {c: _best(result, c) for c in spec.columns}
    lines = [
        "% generated by distillkit.tables.aggregate; needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + latex_escape(spec.caption or spec.title) + "}",
        r"\label{tab:" + spec.name + "}",
        r"\begin{tabular}{l" + "r" * len(spec.columns) + "}",
        r"\toprule",
        " & ".join(["Method", *(latex_escape(column_label(spec, c)) for c in spec.columns)]) + r" \\",
        r"\midrule",
    ]
    for row in spec.rows:
        cells = [latex_escape(row.label)]
        for column in spec.columns:
            cell = result.cell(row.label, column)
            text = format_cell(cell, latex=True)
            if cell.value is not None and best[column] is not None and cell.value == best[column]:
                text = r"\textbf{" + text + "}"
            if cell.notes:
                text += r"\textsuperscript{" + ",".join(letters[n] for n in cell.notes) + "}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip"]
    for letter, text in _notes(result, letters):
        mark = r"\textsuperscript{" + letter + "}~" if letter else ""
        lines.append(r"{\footnotesize " + mark + latex_escape(text) + r"\par}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_json(result: TableResult) -> dict[str, Any]:
    return {
        "table": result.spec.name,
        "scale": result.scale,
        "columns": result.spec.columns,
        "rows": [r.label for r in result.spec.rows],
        "protocols": result.protocols,
        "cells": {f"{r}|{c}": cell.to_dict() for (r, c), cell in result.cells.items()},
        "comparisons": result.comparisons,
        "footnotes": {k: FOOTNOTES[k] for k in _footnote_letters(result)},
    }


def tables_dir(results_root: Path | None, scale: str) -> Path:
    return Path(results_root or RESULTS_ROOT) / scale / "tables"


def write_table(result: TableResult, results_root: Path | None = None) -> dict[str, Path]:
    """Write ``<name>.md``, ``.tex`` and ``.json`` atomically under ``<results_root>/<scale>/tables/``."""
    out = tables_dir(results_root, result.scale)
    paths = {ext: out / f"{result.spec.name}.{ext}" for ext in ("md", "tex", "json")}
    atomic_write_text(paths["md"], to_markdown(result))
    atomic_write_text(paths["tex"], to_latex(result))
    atomic_write_json(paths["json"], to_json(result))
    return paths
