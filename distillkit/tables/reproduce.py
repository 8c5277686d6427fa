"""Reproduce the paper tables: run what is missing, then aggregate and plot.

    python -m distillkit.tables.reproduce --scale smoke|paper [--tables NAME ...] [--dry-run] [--only-aggregate]

Each run is ``python -m distillkit.run <row overrides> <scale overrides> seed=<k>
hydra.run.dir=<run folder> experiment_name=<table>/<row-slug>`` in a subprocess, one after the
other. A run whose ``results.json`` exists is skipped (so an interrupted reproduction resumes); a
failing run leaves ``<run folder>/FAILED`` (exit code, command, the tail of its output) and the
others go on: its cells show as missing. A run stopped by a signal (exit 75, ``PREEMPTED`` in its folder,
a checkpoint beside it) is not a failure: the reproduction stops with exit 75 too, so a requeued job runs it
again and the run resumes from its checkpoint. The output of every run goes to ``<run folder>/run.log``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from distillkit.callbacks.preemption import EXIT_PREEMPTED
from distillkit.tables.aggregate import aggregate_table, tables_dir, write_table
from distillkit.tables.spec import (
    REPO,
    RESULTS_ROOT,
    SCALES,
    SPECS_DIR,
    RunPlan,
    TableSpec,
    load_specs,
    plan_runs,
)
from distillkit.utils.io import atomic_write_text

# The training entry point; tests replace it with a fake command.
RUN_COMMAND: list[str] = [sys.executable, "-m", "distillkit.run"]
TAIL_CHARS = 6000


def run_command(plan: RunPlan) -> list[str]:
    """The argv of one run."""
    return [
        *RUN_COMMAND,
        *plan.overrides,
        f"seed={plan.seed}",
        f"hydra.run.dir={plan.run_dir}",
        f"experiment_name={plan.experiment_name}",
    ]


def pending_runs(specs: Sequence[TableSpec], scale: str, results_root: Path) -> list[RunPlan]:
    """Runs without ``results.json`` (never run, or failed before), in spec order, without duplicates."""
    seen: set[Path] = set()
    out = []
    for spec in specs:
        for plan in plan_runs(spec, scale, results_root):
            if plan.status() != "done" and plan.run_dir not in seen:
                seen.add(plan.run_dir)
                out.append(plan)
    return out


def execute(plan: RunPlan, timeout: float | None = None, cwd: Path = REPO) -> bool | None:
    """Run one training job; ``True`` when it produced ``results.json``; ``None`` when it was preempted
    (exit 75: its own ``PREEMPTED`` record and checkpoint stay, the next pass resumes it); else ``False``
    and a FAILED record is written."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    plan.failed_path.unlink(missing_ok=True)  # a retry starts clean
    cmd = run_command(plan)
    log_path = plan.run_dir / "run.log"
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout}s"
        except OSError as err:
            code = f"could not start: {err}"
    elapsed = time.perf_counter() - start
    if plan.results_path.is_file():  # written atomically at the very end of a run: the results are whole
        if code != 0:
            print(f"[reproduce]   note: exit {code} after writing results.json; see {log_path}", flush=True)
        return True
    if code == EXIT_PREEMPTED:
        return None
    if code == 0:
        code = "exit 0 but no results.json"
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-TAIL_CHARS:]
    atomic_write_text(
        plan.failed_path,
        f"exit: {code}\nseconds: {elapsed:.1f}\ncommand: {shlex.join(cmd)}\n--- last output ---\n{tail}",
    )
    return False


def aggregate_all(specs: Sequence[TableSpec], scale: str, results_root: Path, log=print) -> list[Path]:
    """Write every table (Markdown, LaTeX, JSON) and the plots of ablation tables; the written paths."""
    from distillkit.tables.plots import plot_table

    written: list[Path] = []
    for spec in specs:
        if scale not in spec.scales:
            log(f"[tables] {spec.name}: no {scale!r} scale, skipped")
            continue
        result = aggregate_table(spec, scale, results_root)
        written += list(write_table(result, results_root).values())
        if spec.plot:
            written.append(plot_table(result, tables_dir(results_root, scale) / f"{spec.name}.png"))
        n_cells = len(result.cells)
        n_missing = sum(c.value is None for c in result.cells.values())
        log(f"[tables] {spec.name}: {n_cells - n_missing}/{n_cells} cells filled")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distillkit.tables.reproduce", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scale", required=True, choices=SCALES)
    parser.add_argument("--tables", nargs="+", metavar="NAME", help="table spec names (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs that are missing, run nothing")
    parser.add_argument("--only-aggregate", action="store_true", help="run nothing; rebuild tables and plots")
    parser.add_argument("--specs-dir", type=Path, default=SPECS_DIR)
    parser.add_argument("--results-root", type=Path, default=RESULTS_ROOT)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    args = parser.parse_args(argv)

    specs = load_specs(args.specs_dir, args.tables)
    without_scale = [s.name for s in specs if args.scale not in s.scales]
    if without_scale:
        print(f"[reproduce] tables without a {args.scale!r} scale are skipped: {', '.join(without_scale)}")
    specs = [s for s in specs if args.scale in s.scales]
    results_root = args.results_root.resolve()
    total = sum(len(plan_runs(s, args.scale, results_root)) for s in specs)
    pending = pending_runs(specs, args.scale, results_root)
    print(
        f"[reproduce] scale {args.scale}: {len(specs)} tables, {total} runs, {len(pending)} without results.json"
    )

    if args.dry_run:
        for plan in pending:
            note = {"failed": " (failed before)", "preempted": " (preempted: resumes)"}.get(plan.status(), "")
            print(
                f"MISSING {plan.table} | {plan.row} | seed {plan.seed}{note}\n    {shlex.join(run_command(plan))}"
            )
        return 0

    if not args.only_aggregate:
        failed = []
        for i, plan in enumerate(pending, 1):
            print(
                f"[reproduce] ({i}/{len(pending)}) {plan.table} | {plan.row} | seed {plan.seed}", flush=True
            )
            outcome = execute(plan, timeout=args.timeout)
            if outcome is None:  # a signal stopped the run: stop here too, so a requeue resumes both
                print(
                    f"[reproduce]   preempted: {plan.preempted_path}; run reproduce again to resume it",
                    flush=True,
                )
                return EXIT_PREEMPTED
            if not outcome:
                failed.append(plan)
                print(f"[reproduce]   FAILED: see {plan.failed_path}", flush=True)
        if failed:
            print(f"[reproduce] {len(failed)} of {len(pending)} runs failed; their cells show as missing.")

    for path in aggregate_all(specs, args.scale, results_root):
        print(f"[reproduce] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
