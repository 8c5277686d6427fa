"""Table specs (``experiments/tables/*.yaml``) and the runs they need.

A spec names a table, its columns (evaluation sets plus ``avg``), its rows (a label and Hydra
overrides each) and, per ``scale`` (``paper``: the papers' models; ``smoke``: tiny and quick), extra
overrides and the training seeds. Overrides may splice in named lists from
``experiments/tables/_vocab.yaml`` with ``@name``: the override keys (``method.level=word``,
``method.terms.dsa=0``, ...) live there, in one place, so renaming a key is a one-line change.

Every run has a fixed folder, ``<results_root>/<scale>/<table>/<row-slug>/seed<k>/``: a run whose
``results.json`` exists is done, so reproduction resumes where it stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SPECS_DIR = REPO / "experiments" / "tables"
RESULTS_ROOT = REPO / "experiments" / "results"
VOCAB_FILE = "_vocab.yaml"
SCALES = ("paper", "smoke", "mini")
AVG = "avg"


def slugify(label: str) -> str:
    """A folder-safe name for a row label: lower case, runs of other characters become ``-``."""
    slug = re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-.")
    if not slug:
        raise ValueError(f"Row label {label!r} has no letters or digits to name its folder after.")
    return slug


@dataclass(frozen=True)
class RowSpec:
    label: str
    overrides: list[str]

    @property
    def slug(self) -> str:
        return slugify(self.label)


@dataclass(frozen=True)
class ScaleSpec:
    overrides: list[str]
    seeds: list[int]


@dataclass(frozen=True)
class TableSpec:
    """One table: rows x columns, built at one of several scales."""

    name: str
    title: str
    caption: str
    columns: list[str]
    rows: list[RowSpec]
    scales: dict[str, ScaleSpec]
    plot: list[str] = field(default_factory=list)  # columns to plot (ablation tables); empty: no plot
    compare: list[tuple[str, str]] = field(default_factory=list)  # (row a, row b) paired bootstrap tests
    column_labels: dict[str, str] = field(default_factory=dict)

    @property
    def set_columns(self) -> list[str]:
        return [c for c in self.columns if c != AVG]

    def row(self, label: str) -> RowSpec:
        for row in self.rows:
            if row.label == label:
                return row
        raise ValueError(f"Table {self.name!r} has no row {label!r}; rows: {[r.label for r in self.rows]}")

    def scale(self, scale: str) -> ScaleSpec:
        if scale not in self.scales:
            raise ValueError(f"Table {self.name!r} has no scale {scale!r}; valid: {', '.join(self.scales)}")
        return self.scales[scale]


@dataclass(frozen=True)
class RunPlan:
    """One training run of one table cell row, at one scale and training seed."""

    table: str
    row: str
    slug: str
    scale: str
    seed: int
    run_dir: Path
    overrides: list[str]

    @property
    def experiment_name(self) -> str:
        return f"{self.table}/{self.slug}"

    @property
    def results_path(self) -> Path:
        return self.run_dir / "results.json"

    @property
    def failed_path(self) -> Path:
        return self.run_dir / "FAILED"

    @property
    def preempted_path(self) -> Path:
        return self.run_dir / "PREEMPTED"

    def status(self) -> str:
        """``done`` (results.json exists), ``failed`` (a FAILED record, no results), ``preempted`` (stopped
        by a signal with a checkpoint: the next run resumes it) or ``todo``."""
        if self.results_path.is_file():
            return "done"
        if self.failed_path.is_file():
            return "failed"
        if self.preempted_path.is_file():
            return "preempted"
        return "todo"


def load_vocab(specs_dir: Path | None = None) -> dict[str, list[str]]:
    """The named override lists of ``_vocab.yaml`` (empty when the file is absent)."""
    path = Path(specs_dir or SPECS_DIR) / VOCAB_FILE
    if not path.is_file():
        return {}
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    vocab: dict[str, list[str]] = {}
    for name, value in raw.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: entry {name!r} must be a list of override strings; got {value!r}")
        vocab[str(name)] = value
    return vocab


def expand(
    overrides: list[str], vocab: dict[str, list[str]], where: str = "", _stack: tuple = ()
) -> list[str]:
    """Replace every ``@name`` by ``vocab[name]`` (recursively)."""
    out: list[str] = []
    for item in overrides:
        if not isinstance(item, str):
            raise ValueError(f"{where}: override {item!r} is not a string")
        if not item.startswith("@"):
            out.append(item)
            continue
        name = item[1:]
        if name not in vocab:
            close = [k for k in vocab if k.split(".")[0] == name.split(".")[0]] or sorted(vocab)
            raise ValueError(f"{where}: unknown override name {item!r}; known: {', '.join(close)}")
        if name in _stack:
            raise ValueError(
                f"{where}: override name {item!r} refers to itself ({' -> '.join(_stack + (name,))})"
            )
        out.extend(expand(vocab[name], vocab, where, _stack + (name,)))
    return out


def _as_list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list; got {value!r}")
    return value


def parse_spec(raw: dict[str, Any], vocab: dict[str, list[str]], source: str = "<spec>") -> TableSpec:
    """A :class:`TableSpec` from a loaded YAML mapping (``@names`` expanded, everything checked)."""
    known = {
        "name",
        "title",
        "caption",
        "columns",
        "rows",
        "seeds",
        "scales",
        "plot",
        "compare",
        "column_labels",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; valid: {', '.join(sorted(known))}")
    for key in ("name", "columns", "rows", "scales"):
        if key not in raw:
            raise ValueError(f"{source}: missing key {key!r}")
    name = str(raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(
            f"{source}: table name {name!r} must be folder-safe (letters, digits, '-', '_', '.')"
        )
    columns = [str(c) for c in _as_list(raw["columns"], f"{source}: columns")]
    if not columns or len(set(columns)) != len(columns):
        raise ValueError(f"{source}: columns must be a non-empty list without duplicates; got {columns}")
    rows = []
    for i, row in enumerate(_as_list(raw["rows"], f"{source}: rows")):
        if not isinstance(row, dict) or "label" not in row:
            raise ValueError(
                f"{source}: row {i} must be a mapping with a 'label' (and 'overrides'); got {row!r}"
            )
        label = str(row["label"])
        ovr = expand(
            _as_list(row.get("overrides"), f"{source}: row {label!r} overrides"),
            vocab,
            f"{source} row {label!r}",
        )
        rows.append(RowSpec(label=label, overrides=ovr))
    slugs = [r.slug for r in rows]
    dupes = sorted({s for s in slugs if slugs.count(s) > 1})
    if dupes:
        raise ValueError(f"{source}: row labels map to the same folder {dupes}; make the labels distinct")
    if not rows:
        raise ValueError(f"{source}: no rows")
    default_seeds = [int(s) for s in _as_list(raw.get("seeds"), f"{source}: seeds")]
    scales = {}
    for scale, body in (raw["scales"] or {}).items():
        if scale not in SCALES:
            raise ValueError(f"{source}: unknown scale {scale!r}; valid: {', '.join(SCALES)}")
        body = body or {}
        seeds = [int(s) for s in _as_list(body.get("seeds"), f"{source}: {scale}.seeds")] or default_seeds
        if not seeds:
            raise ValueError(
                f"{source}: scale {scale!r} has no training seeds (give 'seeds' at the top or in it)"
            )
        ovr = expand(
            _as_list(body.get("overrides"), f"{source}: {scale}.overrides"),
            vocab,
            f"{source} scale {scale!r}",
        )
        scales[scale] = ScaleSpec(overrides=ovr, seeds=seeds)
    plot = raw.get("plot") or []
    if plot is True:
        plot = [AVG]
    plot = [str(c) for c in _as_list(plot, f"{source}: plot")]
    bad_plot = [c for c in plot if c not in columns]
    if bad_plot:
        raise ValueError(f"{source}: plot columns {bad_plot} are not table columns {columns}")
    labels = {r.label for r in rows}
    compare = []
    for pair in _as_list(raw.get("compare"), f"{source}: compare"):
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in labels for p in pair)):
            raise ValueError(
                f"{source}: compare entries must be [row label, row label]; got {pair!r}; rows: {sorted(labels)}"
            )
        compare.append((pair[0], pair[1]))
    return TableSpec(
        name=name,
        title=str(raw.get("title") or name),
        caption=str(raw.get("caption") or ""),
        columns=columns,
        rows=rows,
        scales=scales,
        plot=plot,
        compare=compare,
        column_labels={str(k): str(v) for k, v in (raw.get("column_labels") or {}).items()},
    )


def load_spec(path: Path, vocab: dict[str, list[str]] | None = None) -> TableSpec:
    path = Path(path)
    if vocab is None:
        vocab = load_vocab(path.parent)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a table spec must be a mapping")
    spec = parse_spec(raw, vocab, str(path))
    if spec.name != path.stem:
        raise ValueError(
            f"{path}: name {spec.name!r} differs from the file name {path.stem!r}; make them equal"
        )
    return spec


def load_specs(specs_dir: Path | None = None, names: list[str] | None = None) -> list[TableSpec]:
    """All specs of a folder (files starting with ``_`` are not tables), or the named ones."""
    specs_dir = Path(specs_dir or SPECS_DIR)
    vocab = load_vocab(specs_dir)
    available = {p.stem: p for p in sorted(specs_dir.glob("*.yaml")) if not p.name.startswith("_")}
    if names:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(f"Unknown tables {unknown}; valid: {', '.join(available)}")
        chosen = [available[n] for n in names]
    else:
        chosen = list(available.values())
    return [load_spec(p, vocab) for p in chosen]


def run_dir(results_root: Path, scale: str, table: str, row_slug: str, seed: int) -> Path:
    """``<results_root>/<scale>/<table>/<row-slug>/seed<k>``."""
    return Path(results_root) / scale / table / row_slug / f"seed{seed}"


def plan_runs(spec: TableSpec, scale: str, results_root: Path | None = None) -> list[RunPlan]:
    """Every run the table needs at ``scale``: rows x training seeds, in spec order."""
    results_root = Path(results_root or RESULTS_ROOT)
    sc = spec.scale(scale)
    return [
        RunPlan(
            table=spec.name,
            row=row.label,
            slug=row.slug,
            scale=scale,
            seed=seed,
            run_dir=run_dir(results_root, scale, spec.name, row.slug, seed),
            overrides=[*row.overrides, *sc.overrides],
        )
        for row in spec.rows
        for seed in sc.seeds
    ]
