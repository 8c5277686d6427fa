"""``benchmarks.common.count_flops``: torch's FLOP counter with sparse operands counted by their non-zeros
and the CPU attention kernels counted; each figure computed here from the shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import count_flops


def test_dense_products_forward_and_backward():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    linear = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16, requires_grad=True)
    # forward (addmm) + the input gradient + the weight gradient, each 2 * 8 * 16 * 4
    assert count_flops(lambda: linear(x).sum().backward()) == 3 * 2 * 8 * 16 * 4
    batched = torch.randn(3, 5, 6), torch.randn(3, 6, 7)
    assert count_flops(lambda: torch.bmm(*batched)) == 2 * 3 * 5 * 6 * 7


def test_a_sparse_operand_counts_its_nonzeros_not_its_dense_size():
    indices = torch.tensor([[0, 2, 5], [1, 1, 7]])
    sparse = torch.sparse_coo_tensor(indices, torch.ones(3), (6, 9), check_invariants=True)
    dense = torch.randn(9, 4)
    assert count_flops(lambda: torch.mm(sparse, dense)) == 2 * 3 * 4  # not 2 * 6 * 9 * 4
    # the pooling's path: torch.sparse.mm forward, and (sparse)^T @ grad for the dense side's gradient
    flat = torch.randn(9, 4, requires_grad=True)
    assert count_flops(lambda: torch.sparse.mm(sparse, flat)) == 2 * 3 * 4
    assert count_flops(lambda: torch.sparse.mm(sparse, flat).sum().backward()) == 2 * (2 * 3 * 4)


def test_cpu_attention_is_counted_like_the_gpu_kernels():
    b, h, s, d = 2, 4, 16, 8
    q = torch.randn(b, h, s, d)
    # forward: scores q k^T and scores @ v, each 2 * (b*h) * s * s * d
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * b * h * s * s * d)
    qg = q.clone().requires_grad_(True)
    both = count_flops(lambda: F.scaled_dot_product_attention(qg, qg, qg).sum().backward())
    # torch's backward formula: the recomputed scores and four gradient products, five in all
    assert both == 2 * (2 * b * h * s * s * d) + 5 * (2 * b * h * s * s * d)
