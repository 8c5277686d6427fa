"""`reproduce --scale smoke` end to end on one small table: real runs, real aggregation (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = """
name: tiny_table
title: "smoke check"
caption: "two rows, one seed"
columns: [dolly, self-inst, vicuna, sinst, avg]
seeds: [1]
scales:
  smoke:
    overrides: [model=tiny, data=dolly_smoke, eval=smoke, trainer=smoke, trainer.max_steps=3,
                model.teacher_sft.max_steps=5, data.max_train_rows=48, data.max_dev_rows=8, eval.max_prompts=4,
                eval.max_new_tokens=8, callbacks.dev_rouge.max_prompts=4, callbacks.dev_rouge.max_new_tokens=4]
rows:
  - {label: SFT, overrides: [method=sft]}
  - {label: KD (FKL), overrides: [method=kd, method.divergence=fkl]}
  - {label: Not implemented, overrides: [method=not_a_method]}
"""


@pytest.mark.slow
def test_reproduce_smoke_runs_aggregates_and_marks_missing_cells(tmp_path, data_root):
    specs, results = tmp_path / "specs", tmp_path / "results"
    specs.mkdir()
    (specs / "tiny_table.yaml").write_text(SPEC)
    env = {**os.environ, "DISTILLKIT_DATA_ROOT": str(data_root)}
    cmd = [
        sys.executable,
        "-m",
        "distillkit.tables.reproduce",
        "--scale",
        "smoke",
        "--specs-dir",
        str(specs),
        "--results-root",
        str(results),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (results / "smoke" / "tables" / "tiny_table.md").read_text()
    assert (results / "smoke" / "tables" / "tiny_table.tex").is_file()
    for row in ("SFT", "KD (FKL)"):
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {row} |"))
        assert "—" not in line, line  # every cell of a finished row comes from its results.json
    missing = next(ln for ln in table.splitlines() if ln.startswith("| Not implemented |"))
    assert missing.count("—") == 5
    assert (results / "smoke" / "tiny_table" / "not-implemented" / "seed1" / "FAILED").is_file()
    # a second pass runs nothing that already has results (the reproduction resumes)
    again = subprocess.run(
        cmd + ["--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert "1 without results.json" in again.stdout
