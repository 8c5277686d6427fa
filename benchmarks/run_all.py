"""``make bench``: run every benchmark in its own process, a summary of each ratio against its target,
and one report of everything (``benchmarks/results/report.md`` + ``report.json``).

    python benchmarks/run_all.py [--quick] [--only spans|methods|xtok|chunk|paper]
    BENCH_SCALE=paper python benchmarks/run_all.py      # on a GPU: qwen-to-gpt2 at its real size, MFU

* ``benchmarks/bench_spans.py``: cached spaCy parse speed-up (target >= 50x) and span pooling as a
  share of a KD step (target <= 5%, one row per batch shape);
* ``benchmarks/bench_methods.py``: every same-tokenizer method's step time and peak memory against
  KD-SRKL over alternating rounds; MTA's targets (<= 1.05x step, <= 1.15x memory);
* ``benchmarks/bench_xtok.py``: every cross-tokenizer method against ULD, data preparation first run
  vs cached;
* ``benchmarks/bench_chunk.py``: the KD loss's peak memory with ``method.chunk_size`` vs without, at
  the Qwen vocabulary (151936);
* ``BENCH_SCALE=paper``: ``benchmarks/bench_paper.py`` (sft, kd, mta, sra on qwen-to-gpt2, bf16, MFU)
  and the chunk benchmark on the GPU instead; on a machine without a GPU it refuses, saying so.

Each line of the summary says PASS or MISS. The exit status is 0 either way — a benchmark is a
measurement, not a test — unless a benchmark *crashed* (exit 1: that is a bug) or the paper scale was
asked for without a GPU (exit 2). The data root for the parse benchmark comes from
``$DISTILLKIT_DATA_ROOT``, else ``../shared/data`` next to the repo. Threads are left at torch's defaults.
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
BENCHMARKS = ("spans", "methods", "xtok", "chunk", "paper")
SCALES = ("cpu", "paper")


def _env() -> dict[str, str]:
    env = os.environ.copy()
    fallback = REPO.parent / "shared" / "data"
    if not env.get("DISTILLKIT_DATA_ROOT") and fallback.is_dir():
        env["DISTILLKIT_DATA_ROOT"] = str(fallback)
    return env


def commands(quick: bool, scale: str = "cpu") -> dict[str, list[str]]:
    """The command line of each benchmark (``quick``: the smallest sizes, for a smoke run)."""
    py = sys.executable
    chunk = [py, "benchmarks/bench_chunk.py"] + (["--quick"] if quick else ["--tokens", "512"])
    if scale == "paper":
        paper = [py, "benchmarks/bench_paper.py", "--steps", "3" if quick else "10"]
        return {
            "paper": paper,
            "chunk": [py, "benchmarks/bench_chunk.py", "--tokens", "4096", "--chunk", "512"],
        }
    spans = [py, "benchmarks/bench_spans.py"] + (["--quick"] if quick else ["--repeat", "2"])
    methods = [py, "benchmarks/bench_methods.py"]
    methods += (
        ["--shape", "tiny", "--repeat", "1", "--warmup", "0", "--rounds", "1", "--paired-runs", "1"]
        + ["--pairs", "2"]
        if quick
        else ["--repeat", "2", "--rounds", "3"]
    )
    xtok = [py, "benchmarks/bench_xtok.py"]
    xtok += (
        ["--shape", "tiny", "--rounds", "1", "--steps", "1"] if quick else ["--rounds", "3", "--steps", "2"]
    )
    return {"spans": spans, "methods": methods, "xtok": xtok, "chunk": chunk}


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
    if methods is not None and "ratios" in methods:
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
    cli.add_argument("--scale", choices=SCALES, default=os.environ.get("BENCH_SCALE") or "cpu")
    args = cli.parse_args(argv)
    if args.scale == "paper":
        import torch

        if not torch.cuda.is_available():
            from benchmarks.bench_paper import NOT_ON_CPU

            print(NOT_ON_CPU, file=sys.stderr)
            return 2

    crashed, seconds = [], {}
    started = time.perf_counter()
    for name, cmd in commands(args.quick, args.scale).items():
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
    if not (RESULTS / ".gitignore").exists():
        (RESULTS / ".gitignore").write_text("*\n")
    seconds["total"] = time.perf_counter() - started
    atomic_write_json(
        RESULTS / "summary.json",
        {"rows": rows, "seconds": seconds, "crashed": crashed, "quick": args.quick, "scale": args.scale},
    )
    from benchmarks.report import write_report

    ran = [n for n in seconds if n != "total" and n not in crashed]
    settings = {"scale": args.scale, "quick": args.quick, "benchmarks": " ".join(ran)}
    report = write_report(RESULTS, settings, names=[*ran, "summary"])
    print(f"report: {report} (and report.json); total {seconds['total']:.0f} s")
    return 1 if crashed else 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
