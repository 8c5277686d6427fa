"""Where instruction rows come from: MiniLLM/DSKD jsonl files, the Dolly hub dataset, or synthetic.

A row is ``{"instruction": str, "input": str (optional), "output": str | list[str]}``.
Malformed rows (missing fields, empty output) are counted and reported, never crash a run. A file
line that is not JSON at all is reported with its file and line number; ``data.on_bad_rows``
decides: ``fail`` (the default) stops before training, ``skip`` drops it and counts it as
``dropped.<split>.bad_json`` (the line numbers in ``bad_lines``) in the data report.
"""

from __future__ import annotations

import glob
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillkit.config import value
from distillkit.errors import DataError
from distillkit.utils.io import data_root as resolve_data_root
from distillkit.utils.io import read_jsonl

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


@dataclass
class SourceReport:
    """What was read and what was dropped, per split (written into results.json)."""

    files: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    #: per split: ``"<file>:<line>"`` of the lines skipped as invalid JSON (the first 100)
    bad_lines: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"files": self.files, "rows": self.rows, "dropped": self.dropped}
        if self.bad_lines:
            out["bad_lines"] = self.bad_lines
        return out


def validate_row(row: Any) -> str | None:
    """The reason a row is malformed, or None when it is usable."""
    if not isinstance(row, dict):
        return "not_an_object"
    if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
        return "missing_instruction"
    inp = row.get("input")
    if inp is not None and not isinstance(inp, str):
        return "bad_input"
    out = row.get("output")
    if isinstance(out, list):
        if not out or not all(isinstance(o, str) and o.strip() for o in out):
            return "empty_output"
    elif not isinstance(out, str) or not out.strip():
        return "empty_output"
    return None


def clean_rows(rows: list[Any], split: str, report: SourceReport) -> list[dict]:
    kept, reasons = [], Counter()
    for row in rows:
        reason = validate_row(row)
        if reason:
            reasons[reason] += 1
        else:
            kept.append(row)
    report.rows[split] = len(kept)
    if reasons:
        report.dropped.setdefault(split, {}).update(reasons)
        log.warning("data/%s: dropped %d malformed rows %s", split, sum(reasons.values()), dict(reasons))
    return kept


def load_splits(cfg: Any) -> tuple[dict[str, list[dict]], SourceReport]:
    """Rows of each split (train/dev/test) for a ``DataConfig``."""
    report = SourceReport()
    source = value(cfg.source)
    if source == "synthetic":
        from distillkit.data.synthetic import synthetic_splits

        s = cfg.synthetic
        raw = synthetic_splits(s.n_train, s.n_dev, s.n_test, seed=s.seed)
        report.files = {k: [f"synthetic(seed={s.seed})"] for k in raw}
    elif source == "jsonl":
        raw = _jsonl_splits(cfg, report)
    elif source == "dolly_hub":
        raw = _dolly_hub_splits(cfg)
        report.files = {k: [f"hub:{cfg.hub_id}"] for k in raw}
    else:  # pragma: no cover - the enum rejects it at compose time
        raise DataError(f"data.source={source!r}; valid: synthetic, jsonl, dolly_hub")
    splits = {k: clean_rows(raw.get(k, []), k, report) for k in SPLITS}
    limits = {"train": cfg.max_train_rows, "dev": cfg.max_dev_rows}
    for split, limit in limits.items():
        if limit is not None and len(splits[split]) > limit:
            rng = random.Random(cfg.shuffle_seed)
            splits[split] = rng.sample(splits[split], limit)
            report.rows[split] = limit
    if not splits["train"]:
        raise DataError(f"data={cfg.name}: the train split is empty (files: {report.files.get('train')}).")
    return splits, report


def _jsonl_splits(cfg: Any, report: SourceReport) -> dict[str, list[dict]]:
    root = Path(cfg.root) if cfg.root else resolve_data_root()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder (set data.root or $DISTILLKIT_DATA_ROOT).")
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        pattern = getattr(cfg, split)
        if not pattern:
            continue
        files = sorted(glob.glob(str(root / pattern)))
        if not files:
            raise DataError(
                f"data.{split}={pattern!r} matches no file under data.root={str(root)!r}; "
                f"check data.root / $DISTILLKIT_DATA_ROOT or the glob."
            )
        report.files[split] = [str(Path(f).relative_to(root)) for f in files]
        rows: list[dict] = []
        on_bad = value(cfg.get("on_bad_rows", "fail"))
        for f in files:
            bad: list[int] = []
            rows.extend(read_jsonl(f, on_bad_rows=on_bad, bad_lines=bad))
            name = str(Path(f).relative_to(root))
            if bad:
                report.bad_lines.setdefault(split, []).extend(f"{name}:{n}" for n in bad)
        if split in report.bad_lines:
            total = len(report.bad_lines[split])
            report.bad_lines[split] = report.bad_lines[split][:100]
            report.dropped.setdefault(split, {})["bad_json"] = total
        out[split] = rows
    return out


def _dolly_hub_splits(cfg: Any) -> dict[str, list[dict]]:
    """databricks-dolly-15k split the MiniLLM way: shuffled (seed 42), 500 test, 1000 dev, rest train."""
    try:
        import datasets

        ds = datasets.load_dataset(cfg.hub_id, split="train")
    except Exception as err:  # offline, no cache, renamed dataset ...
        raise DataError(
            f"Could not load {cfg.hub_id!r} through `datasets` ({type(err).__name__}: {err}). Offline, use "
            "data=dolly with data.root (or $DISTILLKIT_DATA_ROOT) pointing at a MiniLLM-layout data folder."
        ) from err
    rows = [
        {"instruction": r["instruction"], "input": r.get("context", ""), "output": r["response"]} for r in ds
    ]
    random.Random(42).shuffle(rows)
    return {"test": rows[:500], "dev": rows[500:1500], "train": rows[1500:]}
