"""Shared pieces of the benchmarks: a random-init GPT-2 teacher/student pair, batches, a plain KD step, a timer.

Every benchmark reports *ratios measured in the same run* (e.g. pooling time / KD step time), never
absolute times against a threshold: the machines differ, the ratios travel.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def random_gpt2(vocab: int, layers: int, dim: int, heads: int, positions: int = 512) -> torch.nn.Module:
    """A random-init GPT-2 LM with dropout off (steady timings)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def bench_pair(vocab: int = 8192, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random-init GPT-2 teacher (8 layers, d=512, 8 heads) and student (4 layers, d=256, 4 heads).

    Both use ``vocab`` tokens and 512 positions. The teacher is frozen and in eval mode; the student
    trains (dropout off so timings are steady).
    """
    torch.manual_seed(seed)
    teacher = random_gpt2(vocab, 8, 512, 8).eval()
    teacher.requires_grad_(False)
    student = random_gpt2(vocab, 4, 256, 4).train()
    return teacher, student


def make_batch(B: int = 8, L: int = 256, vocab: int = 8192, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with a full attention mask: ``{"input_ids", "attention_mask"}`` of shape (B, L)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, vocab, (B, L), generator=gen),
        "attention_mask": torch.ones(B, L, dtype=torch.long),
    }


def kd_step(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> float:
    """One plain token-level KD step: teacher forward (no grad), student forward, forward KL, backward, step."""
    with torch.no_grad():
        t_logits = teacher(**batch).logits
    s_logits = student(**batch).logits
    mask = batch["attention_mask"].bool()
    t_logp = F.log_softmax(t_logits.float(), dim=-1)
    s_logp = F.log_softmax(s_logits.float(), dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    loss = kl[mask].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def time_fn(fn: Callable[[], object], warmup: int = 1, repeat: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs (threads unchanged)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_json_child(cmd: list[str], ident: dict, cwd: str, env: dict | None = None) -> dict:
    """Run one benchmark child (a fresh interpreter) and parse the JSON line it prints last. A child that
    fails becomes ``{**ident, "error": <its last stderr line>}`` (its row of the report says so), with the
    tail of its stderr printed, rather than stopping the other measurements."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        print(
            f"!! benchmark child {ident} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
            file=sys.stderr,
        )
        return {**ident, "error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _matmul_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    """2·m·k·n for ``a (m, k) @ b (k, n)``; 2·nnz·(other side's free dim) when one side is sparse."""
    if a.is_sparse:
        return 2 * a._nnz() * b.shape[1]
    if b.is_sparse:
        return 2 * b._nnz() * a.shape[0]
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _mm_flops(a, b, *args, out_val=None, **kwargs) -> int:
    return _matmul_flops(a, b)


def _addmm_flops(bias, a, b, *args, out_val=None, **kwargs) -> int:
    return _matmul_flops(a, b)


def _sdpa_cpu_flops(q, k, v, *args, out_val=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q.shape, k.shape, v.shape)


def _sdpa_cpu_backward_flops(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)


# FlopCounterMode passes these the tensors themselves, not their shapes
for _formula in (_mm_flops, _addmm_flops, _sdpa_cpu_flops, _sdpa_cpu_backward_flops):
    _formula._get_raw = True


def count_flops(fn: Callable[[], object]) -> int:
    """The matmul-class FLOPs of one call of ``fn`` (``torch.utils.flop_counter``: mm, addmm, bmm,
    baddbmm, attention), counting forward and backward: a machine-independent measure of work.

    Two corrections to torch's table: a sparse operand (the CPU span pooling's ``(B·S, B·L)`` matrix)
    is counted by its non-zeros, not as dense, forward (``_sparse_addmm``, absent from the table) and
    backward (an ``mm``); the CPU SDPA kernels
    (``_scaled_dot_product_flash_attention_for_cpu`` and its backward), absent from the table, are
    counted with the GPU kernels' formulas. Elementwise work (softmax, norms, the divergences) is not
    counted, so a ratio of two counts is the ratio of the step times only where matmuls dominate.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {
        aten.mm: _mm_flops,
        aten.addmm: _addmm_flops,
        aten._sparse_addmm: _addmm_flops,  # torch.sparse.mm's forward
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    counter = fc.FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return int(counter.get_total_flops())
