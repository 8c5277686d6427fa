"""Benchmark of ``method.chunk_size``: peak memory of the KD loss (divergence + the method's CE, forward
and backward) over a large vocabulary, unchunked vs chunked.

    python benchmarks/bench_chunk.py [--vocab 151936] [--tokens 1024] [--chunk 256] [--quick] [--out PATH]

The inputs are what the student and the teacher hand the loss: ``(1, tokens, vocab)`` logits (float32 on
the CPU, bf16 on a GPU, as the models output them under ``bf16-mixed``), the student's requiring grad,
every position counted. The measured call is the step's loss part as :class:`~distillkit.methods.base.Method`
runs it for ``method=kd`` (``kd_rate`` 0.5: CE and the divergence both count), then ``backward``. Each
(divergence, chunking) runs in its own child process; a child reports the loss's own peak memory above
what the inputs hold (on the CPU: peak RSS minus the RSS once the inputs exist; on a GPU:
``max_memory_allocated`` minus the allocated memory then), and the time of the call. The gradient of the
student logits (``tokens x vocab``) is part of both figures. Writes ``benchmarks/results/chunk.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import peak_rss_mb, run_json_child  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DIVERGENCES = ("fkl", "srkl")


def rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(divergence: str, chunk: int | None, vocab: int, tokens: int, device: str) -> dict[str, Any]:
    import torch

    from distillkit.methods.base import Method
    from distillkit.methods.kd import KD
    from distillkit.types import Batch, ModelOutput, SideBatch

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    method = Method(KD(divergence=divergence, chunk_size=chunk), kd_rate=0.5)

    def inputs(n: int, v: int):
        student = torch.randn(1, n, v, generator=gen, device=device, dtype=dtype).requires_grad_(True)
        teacher = torch.randn(1, n, v, generator=gen, device=device, dtype=dtype)
        labels = torch.randint(0, v, (1, n), generator=gen, device=device)
        zeros = torch.zeros(1, n, dtype=torch.long, device=device)
        side = SideBatch(labels, zeros + 1, labels, zeros[..., None].expand(1, n, 2))
        batch = Batch(student=side, teacher=side, texts=[""], prompt_chars=[0], index=torch.arange(1))
        return student, teacher, batch

    def call(student, teacher, batch) -> None:
        terms = method(ModelOutput(logits=student), ModelOutput(logits=teacher), batch)
        loss = sum(method.weights[k] * v for k, v in terms.items())
        loss.backward()

    # the same calls on small inputs first: the first call's one-off costs (code pages, kernels, the
    # autograd engine's threads) must not count as the loss's memory
    call(*inputs(8, 128))
    student, teacher, batch = inputs(tokens, vocab)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    start = time.perf_counter()
    call(student, teacher, batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    return {
        "divergence": divergence,
        "chunk_size": chunk,
        "vocab": vocab,
        "tokens": tokens,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "inputs_mb": 2 * tokens * vocab * student.element_size() / 2**20,
        "loss_peak_mb": peak - before,
        "seconds": seconds,
    }


def spawn(divergence: str, chunk: int | None, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        divergence,
        "--child-chunk",
        str(chunk or 0),
    ]
    cmd += ["--vocab", str(args.vocab), "--tokens", str(args.tokens), "--device", args.device]
    return run_json_child(cmd, {"divergence": divergence, "chunk_size": chunk}, cwd=str(REPO))


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per divergence: unchunked and chunked peak memory and time, and their ratios."""
    rows = []
    for divergence in dict.fromkeys(r["divergence"] for r in records):
        plain = next((r for r in records if r["divergence"] == divergence and not r["chunk_size"]), None)
        chunked = next((r for r in records if r["divergence"] == divergence and r["chunk_size"]), None)
        row: dict[str, Any] = {"divergence": divergence, "unchunked": plain, "chunked": chunked}
        if plain and chunked and "error" not in plain and "error" not in chunked:
            row["memory_ratio"] = chunked["loss_peak_mb"] / max(plain["loss_peak_mb"], 1e-9)
            row["time_ratio"] = chunked["seconds"] / max(plain["seconds"], 1e-9)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--vocab", type=int, default=151936, help="vocabulary (Qwen's 151936 by default)")
    cli.add_argument("--tokens", type=int, default=1024, help="counted positions (e.g. 2 rows x 512)")
    cli.add_argument("--chunk", type=int, default=256, help="method.chunk_size of the chunked run")
    cli.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    cli.add_argument("--quick", action="store_true", help="32k vocabulary, 256 tokens, chunks of 64")
    cli.add_argument("--out", type=Path, default=RESULTS / "chunk.json")
    cli.add_argument("--child", choices=DIVERGENCES, help=argparse.SUPPRESS)
    cli.add_argument("--child-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = cli.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        record = run_child(args.child, args.child_chunk or None, args.vocab, args.tokens, args.device)
        print(json.dumps(record))
        return record
    if args.quick:
        args.vocab, args.tokens, args.chunk = 32000, 256, 64
    records = [spawn(d, c, args) for d in DIVERGENCES for c in (None, args.chunk)]
    result = {
        "vocab": args.vocab,
        "tokens": args.tokens,
        "chunk_size": args.chunk,
        "device": args.device,
        "rows": summarize(records),
        "raw": records,
    }
    print(
        f"KD loss (CE + divergence, forward + backward) at V={args.vocab}, {args.tokens} tokens, {args.device}:"
    )
    for row in result["rows"]:
        p, c = row["unchunked"], row["chunked"]
        if "memory_ratio" not in row:
            print(f"  {row['divergence']}: failed ({(p or {}).get('error')} / {(c or {}).get('error')})")
            continue
        print(
            f"  {row['divergence']}: peak {p['loss_peak_mb']:.0f} MiB unchunked, {c['loss_peak_mb']:.0f} MiB with "
            f"chunk_size={args.chunk} ({row['memory_ratio']:.2f}x), time {row['time_ratio']:.2f}x"
        )
    from distillkit.utils.io import atomic_write_json

    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
