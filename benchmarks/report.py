"""``benchmarks/results/report.md`` (+ ``report.json``): one report of every benchmark of a ``make bench`` run.

    python benchmarks/report.py [--results DIR]

Reads the JSON each benchmark wrote in ``DIR`` (``methods.json``, ``xtok.json``, ``spans.json``,
``chunk.json``, ``paper.json``; a missing one is a line saying so) and writes, atomically, one Markdown
report with the date, the machine (CPU count, torch version, device) and each benchmark's settings, and
``report.json`` with every raw number. The columns:

* ``step / base``: the method's step time over the pair's base (``kd``: KD-SRKL on the same-tokenizer
  pair, ``uld`` on the cross-tokenizer pair) in the same round, the median over the rounds; ``range``:
  the smallest and largest round;
* ``peak memory / base``: peak resident memory of the method's child over the base's (same-tokenizer:
  whole-process RSS; cross-tokenizer: RSS above the baseline child that only builds data and models);
* ``tokens/s``: tokens of the batch over the median step time (absolute: machine-dependent);
* ``prep first / cached``: the child's data preparation into an empty cache vs from the cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SOURCES = ("methods", "xtok", "spans", "chunk", "paper", "summary")


def machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def load(results: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The benchmarks' JSONs in ``results`` (``names``: only these, e.g. the ones that ran this time)."""
    out = {}
    for name in SOURCES if names is None else [n for n in SOURCES if n in names]:
        path = results / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _x(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}x" if isinstance(value, (int, float)) else "—"


def _range(r: list[float] | None) -> str:
    return f"{r[0]:.2f}-{r[1]:.2f}x" if r else "—"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "—"


def methods_section(m: dict[str, Any]) -> list[str]:
    sizes = m.get("sizes", {})
    lines = [
        "## Same-tokenizer pair (`benchmarks/bench_methods.py`)",
        "",
        f"Random-init GPT-2 teacher {sizes.get('teacher_layers')} x {sizes.get('teacher_dim')} and student "
        f"{sizes.get('student_layers')} x {sizes.get('student_dim')}, vocabulary {sizes.get('vocab')}, batch "
        f"{sizes.get('batch')} x {sizes.get('seq_len')} (shape `{m.get('shape')}`); {len(m.get('rounds', []))} "
        f"rounds, each step the median of {m.get('repeat')} after {m.get('warmup')} warm-up; base `{m.get('base')}`.",
        "",
        f"| method | step / {m.get('base')} | range | peak memory / {m.get('base')} | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for name, r in m.get("methods", {}).items():
        label = r.get("label", name)
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | |")
            continue
        lines.append(
            f"| {label} | {_x(r.get('step_ratio'))} | {_range(r.get('step_ratio_range'))} | "
            f"{_x(r.get('memory_ratio'))} | {_num(r.get('tokens_per_s'))} |"
        )
    lines += [
        "",
        "SeqKD is not a row of its own: its step is an SFT step (CE on the teacher's generations, "
        "cached in data preparation), so the `sft` row is its step; generation is a one-off data stage.",
    ]
    ratios, targets = m.get("ratios"), m.get("targets", {})
    if ratios:
        paired = m.get("paired")
        if ratios.get("mta_step_ratio_source") == "paired" and paired:
            where = (
                f"paired runs: kd and mta alternately in one process, {m.get('pairs')} ABBA pairs each; "
                "per run "
                + ", ".join(_x(v, 3) for v in paired.get("run_medians", []))
                + f"; from CPU time {_x(paired.get('cpu_ratio'), 3)}; fastest step / fastest step per run "
                + ", ".join(_x(v, 3) for v in paired.get("min_ratios", []))
                + "; separate processes per round "
            )
        else:
            where = "per round "
        lines += [
            "",
            f"MTA / KD (the issue's targets): step {_x(ratios['mta_step_ratio'], 3)} "
            f"(target <= {targets.get('mta_step_ratio_max')}x; {where}"
            + ", ".join(_x(v, 2) for v in ratios.get("mta_step_ratio_rounds", []))
            + f"), peak memory {_x(ratios['mta_memory_ratio'], 3)} (target <= {targets.get('mta_memory_ratio_max')}x).",
        ]
        if paired and paired.get("flop_ratio"):
            lines += [
                "",
                f"MTA / KD matmul FLOPs per step (forward + backward, `torch.utils.flop_counter`, the same on "
                f"every machine): {_x(paired['flop_ratio'], 3)}; the step ratio's floor where matmuls dominate "
                "the step and both methods run them equally well.",
            ]
    return lines


def xtok_section(x: dict[str, Any]) -> list[str]:
    sizes = x.get("sizes", {})
    lines = [
        "## Cross-tokenizer pair (`benchmarks/bench_xtok.py`)",
        "",
        f"Random-init GPT-2 teacher {sizes.get('teacher')} (byte-level BPE {sizes.get('vocab')}) and student "
        f"{sizes.get('student')} (Unigram {sizes.get('vocab')}), batch of the {sizes.get('batch')} longest of "
        f"{sizes.get('rows')} rows (shape `{x.get('shape')}`); {x.get('rounds')} rounds, each step the median "
        f"of {x.get('steps')} after one warm-up; base `uld`. Data preparation of the ULD run into an empty "
        f"cache {_num(x.get('prep_cold_s'), '{:.1f}')} s, cached {_num(x.get('prep_warm_s'), '{:.1f}')} s.",
        "",
        "| method | step / ULD | range | peak memory / ULD | tokens/s | prep first / cached (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in x.get("methods", {}).items():
        label = r.get("label", name)
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {label} | {_x(r.get('step_ratio_vs_uld'))} | {_range(r.get('step_ratio_range'))} | "
            f"{_x(r.get('memory_ratio_vs_uld'))} | {_num(r.get('tokens_per_s'))} | "
            f"{_num(r.get('prep_first_s'), '{:.1f}')} / {_num(r.get('prep_cached_s'), '{:.1f}')} |"
        )
    return lines


def spans_section(s: dict[str, Any]) -> list[str]:
    p = s.get("parse", {})
    lines = [
        "## Span layer (`benchmarks/bench_spans.py`)",
        "",
        f"spaCy parse of {p.get('texts')} Dolly texts through the span cache: first run "
        f"{_num(p.get('first_s'), '{:.1f}')} s, cached {_num(p.get('cached_s'), '{:.3f}')} s "
        f"({_num(p.get('speedup'))}x; target >= {s.get('targets', {}).get('parse_speedup_min', 50):.0f}x).",
        "",
        "| span pooling vs a KD step | pooling | step | share (target <= 5%) |",
        "|---|---|---|---|",
    ]
    for r in s.get("pooling", []):
        lines.append(
            f"| {r['B']} x {r['L']}, {r['spans_per_sample']} spans/row | {r['pool_s'] * 1e3:.1f} ms | "
            f"{r['step_s'] * 1e3:.0f} ms | {100 * r['ratio']:.2f}% |"
        )
    return lines


def chunk_section(c: dict[str, Any]) -> list[str]:
    lines = [
        "## `method.chunk_size` (`benchmarks/bench_chunk.py`)",
        "",
        f"The KD loss of `method=kd` (CE + divergence, forward + backward) on {c.get('tokens')} counted positions "
        f"at vocabulary {c.get('vocab')} ({c.get('device')}); its peak memory above the inputs (the two logits "
        f"tensors), unchunked vs `method.chunk_size={c.get('chunk_size')}`.",
        "",
        "| divergence | unchunked peak (MiB) | chunked peak (MiB) | memory chunked / unchunked | time chunked / unchunked |",
        "|---|---|---|---|---|",
    ]
    for r in c.get("rows", []):
        p, k = r.get("unchunked") or {}, r.get("chunked") or {}
        lines.append(
            f"| {r['divergence']} | {_num(p.get('loss_peak_mb'))} | {_num(k.get('loss_peak_mb'))} | "
            f"{_x(r.get('memory_ratio'))} | {_x(r.get('time_ratio'))} |"
        )
    return lines


def paper_section(p: dict[str, Any]) -> list[str]:
    lines = [
        "## Paper scale (`BENCH_SCALE=paper`, `benchmarks/bench_paper.py`)",
        "",
        f"{p.get('pair')} at its real size, random init, bf16, {p.get('device_name')} (peak "
        f"{p.get('peak_tflops')} TFLOP/s dense bf16), {p.get('batch')} x {p.get('seq_len')}, median of "
        f"{p.get('steps')} steps. FLOP/token: {p.get('flop_rule')}.",
        "",
        "| method | step | tokens/s | TFLOP/s | MFU | peak memory (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in p.get("methods", {}).items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "—"
        lines.append(
            f"| {name} | {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:.0f} | {r['achieved_tflops']:.1f} | "
            f"{mfu} | {_num(r.get('peak_memory_gib'), '{:.1f}')} |"
        )
    return lines


SECTIONS = {
    "methods": methods_section,
    "xtok": xtok_section,
    "spans": spans_section,
    "chunk": chunk_section,
    "paper": paper_section,
}


def render(data: dict[str, Any], info: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [
        "# distillkit benchmark report",
        "",
        f"Date: {info['date']}. Machine: {info['machine']['cpus']} CPUs ({info['machine']['torch_threads']} torch "
        f"threads), torch {info['machine']['torch']}, device {info['machine']['device']}, "
        f"{info['machine']['platform']}. Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + ". Every ratio is taken within one run (the same machine, the same minutes); absolute times and "
        "tokens/s are this machine's only.",
    ]
    for name, section in SECTIONS.items():
        lines.append("")
        if name in data:
            lines += section(data[name])
        elif name != "paper" or settings.get("scale") == "paper":
            lines.append(f"## {name}: no results (not run, or it crashed)")
    seconds = (data.get("summary") or {}).get("seconds")
    if seconds:
        lines += ["", "Seconds per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(
    results: Path = RESULTS, settings: dict[str, Any] | None = None, names: list[str] | None = None
) -> Path:
    """Write ``report.md`` and ``report.json`` into ``results`` from its benchmark JSONs (``names``: only
    those); returns the path of the .md."""
    from distillkit.utils.io import atomic_write_json, atomic_write_text

    data = load(results, names)
    info = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine()}
    settings = dict(settings or {})
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "report.json", {**info, "settings": settings, "results": data})
    path = results / "report.md"
    atomic_write_text(path, render(data, info, settings))
    return path


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--results", type=Path, default=RESULTS)
    args = cli.parse_args(argv)
    print(write_report(args.results))


if __name__ == "__main__":
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
