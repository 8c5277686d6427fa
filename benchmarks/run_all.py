"""``make bench``: run every benchmark in its own process, then one summary of each ratio against its target.

    python benchmarks/run_all.py [--quick] [--only spans|methods]

* ``benchmarks/bench_spans.py``: cached spaCy parse speed-up (target >= 50x) and span pooling as a
  share of a KD step (target <= 5%, one row per batch shape);
* ``benchmarks/bench_methods.py``: MTA step time (<= 1.05x, alternating rounds) and peak memory (<= 1.15x) against a
  plain KD (SRKL) step.

Each line of the summary says PASS or MISS. The exit status is 0 either way — a benchmark is a
measurement, not a test — unless a benchmark *crashed* (exit 1: that is a bug). The data root for
the parse benchmark comes from ``$DISTILLKIT_DATA_ROOT``, else ``../shared/data`` next to the repo.
Threads are left at torch's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = ("spans", "methods", "xtok")


def _env() -> dict[str, str]:
    env = os.environ.copy()
    fallback = REPO.parent / "shared" / "data"
    if not env.get("DISTILLKIT_DATA_ROOT") and fallback.is_dir():
        env["DISTILLKIT_DATA_ROOT"] = str(fallback)
    return env


def commands(quick: bool) -> dict[str, list[str]]:
    """The command line of each benchmark (``quick``: the smallest sizes, for a smoke run)."""
    py = sys.executable
    spans = [py, "benchmarks/bench_spans.py"] + (["--quick"] if quick else ["--repeat", "2"])
    methods = [py, "benchmarks/bench_methods.py"]
    methods += (
        ["--shape", "tiny", "--repeat", "1", "--warmup", "0", "--rounds", "1"] if quick else ["--repeat", "5"]
    )
    xtok = [py, "benchmarks/bench_xtok.py"]
    xtok += ["--shape", "tiny", "--rounds", "1", "--steps", "1"] if quick else ["--rounds", "3"]
    return {"spans": spans, "methods": methods, "xtok": xtok}


def check(measure: str, value: float, target: float, higher_is_better: bool) -> dict[str, Any]:
    """One summary row: the value, its target, and whether it meets it."""
    ok = value >= target if higher_is_better else value <= target
    return {
        "measure": measure,
        "value": value,
        "target": target,
        "higher_is_better": higher_is_better,
        "pass": ok,
    }


def summary_rows(spans: dict[str, Any] | None, methods: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every ratio of the benchmarks' JSON results against its target (a missing result adds no row)."""
    rows = []
    if spans is not None:
        targets = spans["targets"]
        rows.append(
            check(
                "cached spaCy parse speed-up", spans["parse"]["speedup"], targets["parse_speedup_min"], True
            )
        )
        for r in spans["pooling"]:
            rows.append(
                check(
                    f"pooling share of a KD step ({r['B']}x{r['L']}, {r['spans_per_sample']} spans/row)",
                    r["ratio"],
                    targets["pooling_ratio_max"],
                    False,
                )
            )
    if methods is not None:
        ratios, targets = methods["ratios"], methods["targets"]
        rows.append(
            check("MTA step / KD step", ratios["mta_step_ratio"], targets["mta_step_ratio_max"], False)
        )
        rows.append(
            check(
                "MTA peak RSS / KD peak RSS",
                ratios["mta_memory_ratio"],
                targets["mta_memory_ratio_max"],
                False,
            )
        )
    return rows


def _format(row: dict[str, Any]) -> tuple[str, str]:
    if "speed-up" in row["measure"]:
        return f"{row['value']:.0f}x", f">= {row['target']:.0f}x"
    if "pooling" in row["measure"]:
        return f"{100 * row['value']:.2f}%", f"<= {100 * row['target']:.0f}%"
    return f"{row['value']:.3f}x", f"<= {row['target']:.2f}x"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the summary, write ``benchmarks/results/summary.json``; the exit status."""
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run, ratios meaningless)")
    cli.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    args = cli.parse_args(argv)

    crashed, seconds = [], {}
    for name, cmd in commands(args.quick).items():
        if args.only and name != args.only:
            continue
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(cmd, cwd=REPO, env=_env()).returncode
        seconds[name] = time.perf_counter() - start
        if status != 0:
            crashed.append(name)
            print(f"!! benchmark {name!r} crashed (exit {status}); its ratios are left out", flush=True)

    def load(name: str) -> dict[str, Any] | None:
        path = RESULTS / f"{name}.json"
        ran = name in seconds and name not in crashed
        return json.loads(path.read_text()) if ran and path.is_file() else None

    rows = summary_rows(load("spans"), load("methods"))

    from rich.console import Console
    from rich.table import Table

    table = Table(title="make bench: every ratio against its target")
    for column in ("measure", "value", "target", ""):
        table.add_column(column)
    for row in rows:
        value, target = _format(row)
        table.add_row(row["measure"], value, target, "PASS" if row["pass"] else "[bold red]MISS[/]")
    Console().print(table)
    print("seconds per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if args.quick:
        print("(--quick: tiny sizes, the ratios say nothing about the targets)")

    from distillkit.utils.io import atomic_write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        RESULTS / "summary.json", {"rows": rows, "seconds": seconds, "crashed": crashed, "quick": args.quick}
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
