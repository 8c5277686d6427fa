"""Benchmark of the span layer: parsing through the cache, and pooling against a KD step.

    python benchmarks/bench_spans.py [--texts 500] [--repeat 3] [--quick]

1. spaCy parse throughput (texts/s) through :class:`SpanCache` on real Dolly texts: first run (parses,
   loads the pipeline) vs cached run (a fresh cache object reading the shard). Target: cached >= 50x.
2. Span pooling inside a step — self-similarity weights + ``pool_spans`` for one layer on each side
   (teacher d=512, student d=256, with the student's backward) — for B x L tokens and ~100 spans per
   sample, as a fraction of a plain KD step of the bench pair on the same batch shape. Target: <= 5%.

Prints a table and writes ``benchmarks/results/spans.json``. Data root: ``$DISTILLKIT_DATA_ROOT``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import bench_pair, kd_step, make_batch, time_fn  # noqa: E402
from distillkit.spans.cache import SpanCache  # noqa: E402
from distillkit.spans.membership import collate_membership  # noqa: E402
from distillkit.spans.parsers import SpacySpanParser  # noqa: E402
from distillkit.spans.pooling import pool_spans, self_similarity_weights  # noqa: E402
from distillkit.utils.io import atomic_write_json, data_root, read_jsonl  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def bench_parse(n_texts: int) -> dict[str, float]:
    """First (parsing) vs cached run of the spaCy parser through the cache, on Dolly texts."""
    rows = read_jsonl(data_root() / "dolly" / "valid.jsonl")
    rows += read_jsonl(data_root() / "dolly" / "dev.jsonl")
    texts = [r["prompt"] + str(r["output"]) for r in rows[:n_texts]]
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        first = SpanCache(root).get_or_parse(SpacySpanParser(), texts)
        t_first = time.perf_counter() - start

        runs = []

        def cached_run() -> None:
            cache = SpanCache(root)  # a new job: reads the shard from disk
            runs.append((cache.get_or_parse(SpacySpanParser(), texts), cache.last_stats.parse_calls))

        t_cached = time_fn(cached_run, warmup=0, repeat=3)
        assert all(spans == first and calls == 0 for spans, calls in runs)
    return {
        "texts": len(texts),
        "first_s": t_first,
        "cached_s": t_cached,
        "first_texts_per_s": len(texts) / t_first,
        "cached_texts_per_s": len(texts) / t_cached,
        "speedup": t_first / t_cached,
    }


def random_membership(B: int, L: int, spans_per_sample: int, seed: int = 0):
    """~``spans_per_sample`` spans of 1-5 consecutive tokens per sample (phrase-like)."""
    rng = random.Random(seed)
    per_example = []
    for _ in range(B):
        spans = []
        for _ in range(spans_per_sample):
            start = rng.randrange(L)
            spans.append(list(range(start, min(L, start + rng.randint(1, 5)))))
        per_example.append(spans)
    return collate_membership(per_example, seq_len=L)


def bench_pooling(
    pair: tuple[torch.nn.Module, torch.nn.Module], B: int, L: int, spans: int, warmup: int, repeat: int
) -> dict[str, float]:
    """Pooling (both sides, one layer, student backward) vs a KD step of the bench pair at B x L."""
    teacher, student = pair
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch = make_batch(B, L, teacher.config.vocab_size)
    t_step = time_fn(lambda: kd_step(teacher, student, batch, optimizer), warmup=warmup, repeat=repeat)

    gen = torch.Generator().manual_seed(0)
    h_t = torch.randn(B, L, 512, generator=gen)
    h_s = torch.randn(B, L, 256, generator=gen, requires_grad=True)
    mask = batch["attention_mask"]
    membership = random_membership(B, L, spans)

    def pooling() -> None:
        w_t = self_similarity_weights(h_t, mask)
        w_s = self_similarity_weights(h_s, mask)
        c_t, m_t = pool_spans(h_t, membership, w_t)
        c_s, _ = pool_spans(h_s, membership, w_s)
        (c_s * c_t[..., :256]).sum().backward()  # stand-in loss: the student side's backward counts too
        h_s.grad = None

    t_pool = time_fn(pooling, warmup=2, repeat=10)
    return {
        "B": B,
        "L": L,
        "spans_per_sample": spans,
        "step_s": t_step,
        "pool_s": t_pool,
        "ratio": t_pool / t_step,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table, write ``benchmarks/results/spans.json``; returns the results."""
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--texts", type=int, default=500, help="Dolly texts to parse (default 500)")
    cli.add_argument("--repeat", type=int, default=3, help="timed repetitions of a step (median)")
    cli.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = cli.parse_args(argv)

    # (B, L, spans per sample, warm-up steps, timed steps): the first shape warms the pair up; the
    # 16 x 512 step is the slow one on a CPU, timed once
    shapes = [(4, 128, 30, 1, 1)] if args.quick else [(8, 256, 60, 1, args.repeat), (16, 512, 100, 0, 1)]
    pair = bench_pair(vocab=8192)
    results = {
        "parse": bench_parse(50 if args.quick else args.texts),
        "pooling": [bench_pooling(pair, *shape) for shape in shapes],
        "torch_threads": torch.get_num_threads(),
        "targets": {"parse_speedup_min": 50.0, "pooling_ratio_max": 0.05},
    }

    from rich.console import Console
    from rich.table import Table

    p = results["parse"]
    table = Table(title="span layer benchmark")
    for column in ("measure", "value", "target"):
        table.add_column(column)
    table.add_row(
        f"spaCy parse, first run ({p['texts']} Dolly texts)", f"{p['first_texts_per_s']:.1f} texts/s", ""
    )
    table.add_row("spaCy parse, cached run", f"{p['cached_texts_per_s']:.0f} texts/s", "")
    table.add_row("cached / first speed-up", f"{p['speedup']:.0f}x", ">= 50x")
    for r in results["pooling"]:
        table.add_row(
            f"pooling {r['B']}x{r['L']}, {r['spans_per_sample']} spans/sample / KD step",
            f"{r['pool_s'] * 1e3:.1f} ms / {r['step_s'] * 1e3:.0f} ms = {100 * r['ratio']:.2f}%",
            "<= 5%",
        )
    Console().print(table)

    RESULTS.mkdir(parents=True, exist_ok=True)
    ignore = RESULTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    atomic_write_json(RESULTS / "spans.json", results)
    return results


if __name__ == "__main__":
    main()
