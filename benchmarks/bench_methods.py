"""Benchmark of a whole distillation step of every same-tokenizer method, as ratios against plain KD.

    python benchmarks/bench_methods.py [--shape bench|tiny] [--repeat 5] [--warmup 1] [--rounds 3]
                                       [--methods kd mta ...] [--out PATH]

Each (method, round) runs in its own child process (``--child NAME``), so the peak resident memory
of one cannot leak into another's. A child builds the bench pair (random-init GPT-2: teacher 8
layers d=512, student 4 layers d=256, vocabulary 8192), a fixed :class:`~distillkit.types.Batch` of
8 x 256 tokens whose span memberships are built *before* timing (spans cached), the method from the
Hydra config (``tests.helpers.compose_cfg``) and a :class:`~distillkit.module.DistillModule`, then
times one training step — ``compute_terms`` + ``weighted_loss`` + ``backward`` + ``AdamW.step`` over
the student and the method's projectors — as the median of ``--repeat`` runs after ``--warmup``.

The methods (:data:`METHODS`; the first, ``kd``, is the ratios' base):

* ``kd``: ``method=kd method.divergence=srkl method.kd_rate=1.0`` (the DistiLLM base that MTA adds to;
  MTA's default ``kd_rate`` is 1.0 too, so both skip CE and differ only by MTA's terms);
* ``kd_fkl``: the same with the forward KL (the classic KD divergence);
* ``sft``: CE alone, no teacher forward (also SeqKD's step: SeqKD is CE on cached teacher generations);
* ``mta``: ``method=mta`` with 4 mapped pairs (teacher 2 4 6 8 <-> student 1 2 3 4; the first at word
  level, the others at phrase level), self-similarity weights;
* ``sra``: ``method=sra`` on one tokenizer (its aligned grid = the word spans; the last 2 layers mapped);
* ``dskd``: ``method=dskd`` (DSKD's dual-space KD, same vocabulary);
* ``baseline``: imports, models and batch only; no step. Its peak RSS is subtracted to give each
  method's own memory increment.

The rounds alternate the methods (round r runs every method once, the order rotated by r), so machine
drift cannot favour one; each round's ratio is taken within the round, then the median and the range
over the rounds are reported. Targets (issue): MTA step <= 1.05x a KD step, MTA peak memory <= 1.15x.

The MTA / KD step ratio of the target comes from **paired runs** (``--paired-runs``, child ``paired``):
one process builds both the KD and the MTA module (each on its own copy of the pair) and times their
steps alternately, ABBA (kd mta, mta kd, ...), ``--pairs`` pairs; each pair gives one ratio of two
steps taken seconds apart, so drift of a shared or throttled machine (it swings a step by +-12% between
processes on a 2-core VM) cancels within the pair. A run's ratio is the median of its pairs; the
target's value is the median over all pairs of all runs, reported with each run's median (their
spread), and each run's ratio of the two methods' fastest steps (the estimate least touched by
bursts of a shared machine). Each paired run also counts both steps' matmul FLOPs (forward and
backward, :func:`benchmarks.common.count_flops`): their ratio is the same on every machine and is the
step ratio's floor where matmuls dominate the step. The per-process rounds still give every method's
row and the memory ratios.
Student-generated data is off. The MTA child also reports where its step goes (model forwards, MTA's
stages, backward, optimizer) from ``torch.profiler`` labels. Prints a table and writes
``benchmarks/results/methods.json`` (or ``--out``). Never compare absolute times across machines.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    count_flops,
    make_batch,
    peak_rss_mb,
    random_gpt2,
    run_json_child,
    time_fn,
)

RESULTS = REPO / "benchmarks" / "results"
#: name -> what it is (the overrides are in :func:`method_overrides`); the first is the ratios' base
METHODS = {
    "kd": "KD (SRKL, kd_rate 1)",
    "kd_fkl": "KD (FKL, kd_rate 1)",
    "sft": "SFT (also SeqKD's step)",
    "mta": "MTA (4 pairs, on KD-SRKL)",
    "sra": "SRA (2 pairs, one tokenizer)",
    "dskd": "DSKD",
}
BASE = "kd"
CHILDREN = ("baseline", *METHODS)  # the children of a round; "paired" runs apart (run_paired)
TARGETS = {"mta_step_ratio_max": 1.05, "mta_memory_ratio_max": 1.15}
#: ``torch.profiler`` labels: the bench step's phases and MTA.forward's stages (``distillkit.methods.mta``)
STEP_LABELS = ("bench.forward", "bench.backward", "bench.optimizer")
MTA_LABELS = ("mta.weights", "mta.pooling", "mta.dsa", "mta.projector", "mta.hra")


@dataclass(frozen=True)
class Shape:
    """Sizes of one benchmark configuration (teacher and student are random-init GPT-2 models)."""

    teacher_layers: int
    teacher_dim: int
    teacher_heads: int
    student_layers: int
    student_dim: int
    student_heads: int
    vocab: int
    batch: int
    seq_len: int
    prompt_len: int  # the first tokens of each row are prompt (no loss, as in instruction data)
    teacher_map: tuple[int, ...]
    student_map: tuple[int, ...]


SHAPES = {
    "bench": Shape(8, 512, 8, 4, 256, 4, 8192, 8, 256, 64, (2, 4, 6, 8), (1, 2, 3, 4)),
    "tiny": Shape(2, 64, 4, 2, 32, 2, 512, 2, 32, 8, (1, 2), (1, 2)),
}


# --------------------------------------------------------------------------------------------
# building blocks (child side)
# --------------------------------------------------------------------------------------------
class BenchTokenizer:
    """The least a tokenizer must offer to :class:`~distillkit.models.pair.LoadedModel` and the KD check."""

    def __init__(self, size: int):
        self.size = size
        self.name_or_path = f"bench-{size}"

    def __len__(self) -> int:
        return self.size

    all_special_ids: list[int] = []
    eos_token_id = bos_token_id = pad_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(self.size)}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """``<i>``: two bench tokenizers of different sizes share their first ids' strings (an overlap)."""
        return [f"<{i}>" for i in ids]


def build_pair(shape: Shape, seed: int = 0):
    """Teacher (frozen, eval) and student (train) as ``LoadedModel``; dropout off for steady timings."""
    from distillkit.models.pair import LoadedModel

    torch.manual_seed(seed)
    positions = max(shape.seq_len, 64)
    tokenizer = BenchTokenizer(shape.vocab)
    teacher = random_gpt2(
        shape.vocab, shape.teacher_layers, shape.teacher_dim, shape.teacher_heads, positions
    )
    teacher.eval().requires_grad_(False)
    student = random_gpt2(
        shape.vocab, shape.student_layers, shape.student_dim, shape.student_heads, positions
    )
    return LoadedModel(teacher, tokenizer, "teacher"), LoadedModel(student.train(), tokenizer, "student")


def chunk_units(length: int, sizes: tuple[int, int], stride: tuple[int, int], skip: float, rng) -> list:
    """Spans of ``sizes[0]..sizes[1]`` consecutive tokens, a new one every ``stride`` tokens (overlaps
    when the stride is shorter than the span), a fraction ``skip`` of them left out (uncovered text)."""
    units, start = [], 0
    while start < length:
        size = rng.randint(*sizes)
        if rng.random() >= skip:
            units.append(list(range(start, min(length, start + size))))
        start += rng.randint(*stride)
    return units


def build_batch(shape: Shape, seed: int = 0):
    """A fixed shared-tokenizer ``Batch`` with word and phrase memberships built now (spans cached).

    Words: 2-3 tokens, back to back, 10% left out (~90 per row at L=256, covering ~90% of tokens).
    Phrases: 4-8 tokens starting every 3-5 tokens (partially overlapping, like noun chunks and verb
    phrases; ~60 per row at L=256). The first ``prompt_len`` tokens carry no loss.
    """
    from distillkit.spans.membership import collate_membership
    from distillkit.types import Batch, SideBatch, SpanGrid

    rng = random.Random(seed)
    B, L = shape.batch, shape.seq_len
    ids = make_batch(B, L, shape.vocab, seed)
    labels = ids["input_ids"].roll(-1, dims=1)
    labels[:, : shape.prompt_len] = -100
    labels[:, -1] = -100
    positions = torch.arange(L)
    offsets = torch.stack([positions * 4, positions * 4 + 4], dim=-1).expand(B, L, 2).contiguous()
    words = [chunk_units(L, (2, 3), (2, 3), 0.1, rng) for _ in range(B)]
    phrases = [chunk_units(L, (4, 8), (3, 5), 0.0, rng) for _ in range(B)]
    side = SideBatch(
        input_ids=ids["input_ids"],
        attention_mask=ids["attention_mask"],
        labels=labels,
        offsets=offsets,
    )
    grids = {}
    for name, units in (("word", words), ("phrase", phrases)):
        mem = collate_membership(units, L)
        grids[name] = SpanGrid(mem, mem)
    grids["aligned"] = grids["word"]  # SRA's co-segmentation: on one tokenizer, the word spans will do
    stats = {
        "word_spans_per_row": sum(map(len, words)) / B,
        "phrase_spans_per_row": sum(map(len, phrases)) / B,
        "word_token_coverage": sum(len({t for u in w for t in u}) for w in words) / (B * L),
    }
    batch = Batch(
        student=side,
        teacher=side,
        texts=[""] * B,
        prompt_chars=[0] * B,
        index=torch.arange(B),
        grids=grids,
        num_tokens=B * L,
    )
    return batch, stats


def method_overrides(method: str, shape: Shape) -> list[str]:
    """The Hydra overrides of a benchmarked method (``kd`` = SRKL at ``kd_rate`` 1.0, ``mta`` = its defaults)."""
    if method == "kd":
        return ["method=kd", "method.divergence=srkl", "method.kd_rate=1.0"]
    if method == "kd_fkl":
        return ["method=kd", "method.divergence=fkl", "method.kd_rate=1.0"]
    if method == "sft":
        return ["method=sft"]
    if method == "mta":
        return [
            "method=mta",
            "layer_map=explicit",
            f"layer_map.teacher=[{','.join(map(str, shape.teacher_map))}]",
            f"layer_map.student=[{','.join(map(str, shape.student_map))}]",
        ]
    if method == "sra":
        return ["method=sra", "layer_map=uniform", "layer_map.num_pairs=2"]
    if method == "dskd":
        return ["method=dskd"]
    raise ValueError(f"method={method!r}; valid: {', '.join(METHODS)}")


def build_module(method_name: str, shape: Shape, teacher, student):
    """The method from the composed config, set up on the pair, inside a ``DistillModule``, + AdamW."""
    from distillkit.module import DistillModule
    from distillkit.pipeline import build_method, enable_attention_capture
    from tests.helpers import compose_cfg

    cfg = compose_cfg(method_overrides(method_name, shape))
    method = build_method(cfg)
    method.check_tokenizers(teacher.tokenizer, student.tokenizer)
    method.setup(teacher, student)
    enable_attention_capture(teacher, method.teacher_needs, None)  # SRA's attention rows
    enable_attention_capture(student, method.student_needs, None)
    optim = cfg.trainer.optim
    module = DistillModule(student, teacher, method, optim)
    groups = [{"params": [p for p in module.student.parameters() if p.requires_grad], "lr": optim.lr}]
    groups += method.param_groups(optim.lr, optim.projector_lr)
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    return module, optimizer


def make_step(module, optimizer, batch):
    """One training step as Lightning runs it (no trainer): terms, weighted loss, backward, AdamW."""
    from torch.profiler import record_function

    def step() -> None:
        with record_function("bench.forward"):
            loss = module.weighted_loss(module.compute_terms(batch))
        optimizer.zero_grad(set_to_none=True)
        with record_function("bench.backward"):
            loss.backward()
        with record_function("bench.optimizer"):
            optimizer.step()

    return step


def profile_breakdown(step, steps: int = 2) -> dict[str, float]:
    """Mean seconds per step under each ``record_function`` label of the bench step and of MTA.forward.

    The inclusive CPU time of each label, summed over its occurrences (one per mapped pair) and
    averaged over ``steps`` profiled steps; ``step`` is the profiled step's wall time. Profiling
    slows small ops down, so read these as shares, not as absolute times.
    """
    from torch.profiler import ProfilerActivity, profile

    wanted = STEP_LABELS + MTA_LABELS
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    totals = dict.fromkeys(wanted, 0.0)
    for event in prof.events():
        if event.name in totals:
            totals[event.name] += event.cpu_time_total / 1e6  # microseconds -> seconds
    out = {label: total / steps for label, total in totals.items()}
    out["step"] = wall / steps
    return out


def run_paired(
    shape_name: str, pairs: int, warmup: int, methods: tuple[str, str] = ("kd", "mta")
) -> dict[str, Any]:
    """Time two methods' steps alternately in one process: ``pairs`` pairs in ABBA order after ``warmup``
    steps of each. Each method trains its own copy of the pair (the same seed) on the same batch.

    Returns per-pair wall and CPU-time seconds of both and the ratios ``b / a`` of each pair."""
    shape = SHAPES[shape_name]
    batch, _ = build_batch(shape)
    steps = {}
    for name in methods:
        teacher, student = build_pair(shape)
        module, optimizer = build_module(name, shape, teacher, student)
        steps[name] = make_step(module, optimizer, batch)
    for name in methods:
        for _ in range(warmup):
            steps[name]()
    a, b = methods
    wall: dict[str, list[float]] = {a: [], b: []}
    cpu: dict[str, list[float]] = {a: [], b: []}
    for i in range(pairs):
        for name in (a, b) if i % 2 == 0 else (b, a):
            w0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    ratios = [y / x for x, y in zip(wall[a], wall[b])]
    flops = {name: count_flops(steps[name]) for name in methods}  # one more step each, after the timing
    return {
        "child": "paired",
        "shape": shape_name,
        "methods": list(methods),
        "torch_threads": torch.get_num_threads(),
        "wall_s": wall,
        "cpu_s": cpu,
        "ratios": ratios,
        "cpu_ratios": [y / x for x, y in zip(cpu[a], cpu[b])],
        "ratio": statistics.median(ratios),
        # the fastest step of each: the estimate least touched by bursts of a shared machine (timeit's rule)
        "min_ratio": min(wall[b]) / min(wall[a]),
        "flops": flops,
        "flop_ratio": flops[b] / flops[a],
    }


def summarize_paired(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paired runs' MTA / KD step ratio: the median over every pair of every run, each run's
    median (the spread), and the same from CPU time. ``None`` when no run succeeded."""
    ok = [r for r in runs if r.get("ratios")]
    if not ok:
        return None
    every = [x for r in ok for x in r["ratios"]]
    medians = [statistics.median(r["ratios"]) for r in ok]
    return {
        "runs": len(ok),
        "pairs_per_run": [len(r["ratios"]) for r in ok],
        "ratio": statistics.median(every),
        "run_medians": medians,
        "spread": [min(medians), max(medians)],
        "cpu_ratio": statistics.median([x for r in ok for x in r["cpu_ratios"]]),
        "min_ratios": [r["min_ratio"] for r in ok if "min_ratio" in r],
        # the same in every run (the same batch and models): the step ratio's floor at equal efficiency
        "flop_ratio": next((r["flop_ratio"] for r in ok if "flop_ratio" in r), None),
        "errors": [r["error"] for r in runs if "error" in r],
    }


def run_child(name: str, shape_name: str, repeat: int, warmup: int) -> dict[str, Any]:
    """Build everything, time the step (methods only), then read the peak RSS. Returns the record."""
    shape = SHAPES[shape_name]
    import distillkit.methods.kd  # noqa: F401  (the baseline imports what the methods import)
    import distillkit.methods.mta  # noqa: F401
    import distillkit.module  # noqa: F401

    teacher, student = build_pair(shape)
    batch, span_stats = build_batch(shape)
    record: dict[str, Any] = {
        "child": name,
        "shape": shape_name,
        "torch_threads": torch.get_num_threads(),
        "spans": span_stats,
        "tokens": batch.num_tokens,
    }
    if name == "baseline":
        record["peak_rss_mb"] = peak_rss_mb()
        return record

    module, optimizer = build_module(name, shape, teacher, student)
    step = make_step(module, optimizer, batch)
    record["step_s"] = time_fn(step, warmup=warmup, repeat=repeat)
    record["peak_rss_mb"] = peak_rss_mb()  # before the profiled steps below can add anything
    record["weights"] = {k: v for k, v in module.method.weights.items() if v}
    if name == "mta":
        record["pairs"] = [[p.teacher, p.student, p.level] for p in module.method.objective("mta").pairs]
        record["breakdown_s"] = profile_breakdown(step)
    return record


# --------------------------------------------------------------------------------------------
# the parent
# --------------------------------------------------------------------------------------------
def spawn_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run this script with ``--child NAME`` in a fresh interpreter and parse the JSON it prints last.

    A child that fails is recorded as ``{"child": name, "error": <its last stderr line>}`` (its row of
    the report says so) rather than stopping the other methods' measurements.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--shape", args.shape]
    cmd += ["--repeat", str(args.repeat), "--warmup", str(args.warmup), "--pairs", str(args.pairs)]
    return run_json_child(cmd, {"child": name}, cwd=str(REPO))


def summarize(children: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios of MTA against KD measured in one round (raw, and over the baseline's memory)."""
    kd, mta, base = children["kd"], children["mta"], children["baseline"]
    kd_extra = kd["peak_rss_mb"] - base["peak_rss_mb"]
    mta_extra = mta["peak_rss_mb"] - base["peak_rss_mb"]
    return {
        "mta_step_ratio": mta["step_s"] / kd["step_s"],
        "mta_memory_ratio": mta["peak_rss_mb"] / kd["peak_rss_mb"],
        "kd_memory_increment_mb": kd_extra,
        "mta_memory_increment_mb": mta_extra,
        "mta_memory_increment_ratio": mta_extra / kd_extra if kd_extra > 0 else float("nan"),
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize_methods(rounds: list[dict[str, dict[str, Any]]], base: str = BASE) -> dict[str, dict[str, Any]]:
    """Per method over the rounds: median step time, the median and range of its per-round step ratio
    against ``base`` (same round), peak RSS ratio (raw and over the round's baseline), tokens/s."""
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in METHODS if any(n in rnd for rnd in rounds)]
    for name in names:
        ok = [
            (rnd[name], rnd.get(base), rnd.get("baseline")) for rnd in rounds if "step_s" in rnd.get(name, {})
        ]
        if not ok:
            errors = [rnd[name].get("error") for rnd in rounds if name in rnd]
            out[name] = {"label": METHODS[name], "error": errors[0] if errors else "not run"}
            continue
        paired = [(r, b, z) for r, b, z in ok if b is not None and "step_s" in b]
        steps = [r["step_s"] / b["step_s"] for r, b, _ in paired]
        mem = [r["peak_rss_mb"] / b["peak_rss_mb"] for r, b, _ in paired]
        inc = [
            (r["peak_rss_mb"] - z["peak_rss_mb"]) / (b["peak_rss_mb"] - z["peak_rss_mb"])
            for r, b, z in paired
            if z is not None and b["peak_rss_mb"] - z["peak_rss_mb"] > 0
        ]
        out[name] = {
            "label": METHODS[name],
            "rounds": len(ok),
            "step_s": _median([r["step_s"] for r, _, _ in ok]),
            "step_ratio": _median(steps),
            "step_ratio_rounds": steps,
            "step_ratio_range": [min(steps), max(steps)] if steps else None,
            "peak_rss_mb": _median([r["peak_rss_mb"] for r, _, _ in ok]),
            "memory_ratio": _median(mem),
            "memory_increment_ratio": _median(inc),
            "tokens_per_s": _median([r["tokens"] / r["step_s"] for r, _, _ in ok if r.get("tokens")]),
        }
    return out


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        title=f"same-tokenizer step benchmark ({result['shape']} shape, {len(result['rounds'])} alternating "
        f"rounds, base {BASE})"
    )
    for column in ("method", "step (median)", f"step / {BASE}", "range", f"peak RSS / {BASE}", "tokens/s"):
        table.add_column(column)
    for m in result["methods"].values():
        if "error" in m:
            table.add_row(m["label"], f"[bold red]failed[/]: {m['error']}", "", "", "", "")
            continue
        lo, hi = m["step_ratio_range"] or (float("nan"), float("nan"))
        table.add_row(
            m["label"],
            f"{m['step_s'] * 1e3:.0f} ms",
            f"{m['step_ratio']:.3f}x",
            f"{lo:.2f}-{hi:.2f}x",
            f"{m['memory_ratio']:.3f}x",
            f"{m['tokens_per_s']:.0f}",
        )
    console.print(table)
    r, targets = result.get("ratios"), result["targets"]
    if r:
        console.print(
            f"MTA / KD step {r['mta_step_ratio']:.3f}x (target <= {targets['mta_step_ratio_max']:.2f}x, "
            f"from the {r['mta_step_ratio_source']}), peak RSS {r['mta_memory_ratio']:.3f}x (target <= "
            f"{targets['mta_memory_ratio_max']:.2f}x); per round of separate processes: "
            + ", ".join(f"{x:.3f}x" for x in r["mta_step_ratio_rounds"])
            + " (mta / kd)"
        )
    paired = result.get("paired")
    if paired:
        console.print(
            f"paired runs (kd and mta alternately in one process, {result['pairs']} ABBA pairs each): "
            f"{paired['ratio']:.3f}x over every pair; per run "
            + ", ".join(f"{x:.3f}x" for x in paired["run_medians"])
            + f"; from CPU time {paired['cpu_ratio']:.3f}x; fastest step / fastest step per run "
            + ", ".join(f"{x:.3f}x" for x in paired["min_ratios"])
            + (
                f"; matmul FLOPs {paired['flop_ratio']:.3f}x (forward + backward, torch.utils.flop_counter)"
                if paired.get("flop_ratio")
                else ""
            )
        )
    parts = (result.get("children") or {}).get("mta", {}).get("breakdown_s")
    if not parts:
        return
    inside = Table(
        title="inside an MTA step (torch.profiler, inclusive CPU time, share of the profiled step)"
    )
    for column in ("part", "ms / step", "share"):
        inside.add_column(column)
    for label in STEP_LABELS + MTA_LABELS:
        indent = "  " if label.startswith("mta.") else ""
        inside.add_row(
            indent + label, f"{parts[label] * 1e3:.1f}", f"{100 * parts[label] / parts['step']:.1f}%"
        )
    mta_forward = sum(parts[label] for label in MTA_LABELS)
    inside.add_row(
        "MTA forward stages, total", f"{mta_forward * 1e3:.1f}", f"{100 * mta_forward / parts['step']:.1f}%"
    )
    console.print(inside)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parent: run the children, print the tables, write the JSON. Child: print one JSON record."""
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--shape", choices=sorted(SHAPES), default="bench", help="sizes (tiny: a smoke run)")
    cli.add_argument("--repeat", type=int, default=5, help="timed steps per method (median)")
    cli.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    cli.add_argument("--out", type=Path, default=RESULTS / "methods.json", help="where the JSON goes")
    cli.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of every method (median, spread)"
    )
    cli.add_argument("--methods", nargs="+", default=list(METHODS), help=f"a subset ({BASE} always runs)")
    cli.add_argument(
        "--paired-runs", type=int, default=3, help="processes timing kd and mta alternately (0: none)"
    )
    cli.add_argument("--pairs", type=int, default=12, help="ABBA pairs of steps per paired run")
    cli.add_argument("--child", choices=(*CHILDREN, "paired"), help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        cli.error(f"--repeat must be >= 1 and --warmup >= 0, got {args.repeat} and {args.warmup}")
    if args.paired_runs < 0 or args.pairs < 1:
        cli.error(f"--paired-runs must be >= 0 and --pairs >= 1, got {args.paired_runs} and {args.pairs}")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        cli.error(f"--methods {unknown}; valid: {', '.join(METHODS)}")

    if args.child == "paired":
        record = run_paired(args.shape, args.pairs, args.warmup)
        print(json.dumps(record))
        return record
    if args.child:
        record = run_child(args.child, args.shape, args.repeat, args.warmup)
        print(json.dumps(record))
        return record

    # every method once per round, the order rotated round by round, so that machine drift cannot
    # favour one; each round's ratios are taken within the round
    names = [BASE, *[m for m in METHODS if m in args.methods and m != BASE]]
    rounds = []
    for r in range(max(args.rounds, 1)):
        order = names[r % len(names) :] + names[: r % len(names)]
        rnd = {"baseline": spawn_child("baseline", args)}
        rnd.update({name: spawn_child(name, args) for name in order})
        rounds.append(rnd)
    paired_runs = [spawn_child("paired", args) for _ in range(args.paired_runs if "mta" in names else 0)]
    paired = summarize_paired(paired_runs)
    methods = summarize_methods(rounds)
    result: dict[str, Any] = {
        "shape": args.shape,
        "sizes": asdict(SHAPES[args.shape]),
        "repeat": args.repeat,
        "warmup": args.warmup,
        "base": BASE,
        "methods": methods,
        "rounds": rounds,
        "targets": TARGETS,
        "pairs": args.pairs,
        "paired": paired,
        "paired_runs": paired_runs,
        "notes": {"seqkd": "SeqKD's step is an SFT step (CE on cached teacher generations): see the sft row"},
    }
    good = [i for i, rnd in enumerate(rounds) if all("step_s" in rnd.get(n, {}) for n in ("kd", "mta"))]
    if good:
        # the MTA-vs-KD ratios of the median round (the targets), as before
        step_ratios = [rounds[i]["mta"]["step_s"] / rounds[i]["kd"]["step_s"] for i in good]
        median_round = good[sorted(range(len(good)), key=lambda i: step_ratios[i])[len(good) // 2]]
        result["children"] = rounds[median_round]
        ratios = summarize(rounds[median_round])
        ratios["mta_step_ratio_rounds"] = step_ratios
        ratios["mta_step_ratio_spread"] = [min(step_ratios), max(step_ratios)]
        ratios["mta_step_ratio_source"] = "rounds"
        if paired is not None:  # the target's value: the paired runs' (see the module docstring)
            ratios["mta_step_ratio_separate_processes"] = ratios["mta_step_ratio"]
            ratios["mta_step_ratio"] = paired["ratio"]
            ratios["mta_step_ratio_runs"] = paired["run_medians"]
            ratios["mta_step_ratio_source"] = "paired"
        ratios["mta_memory_ratio_rounds"] = [
            rounds[i]["mta"]["peak_rss_mb"] / rounds[i]["kd"]["peak_rss_mb"] for i in good
        ]
        result["ratios"] = ratios
    print_table(result)

    from distillkit.utils.io import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.parent == RESULTS and not (RESULTS / ".gitignore").exists():
        (RESULTS / ".gitignore").write_text("*\n")
    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
