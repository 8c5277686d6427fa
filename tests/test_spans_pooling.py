"""Span pooling and token weights against Python-loop references written from the formulas (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillkit.spans.membership import collate_membership
from distillkit.spans.pooling import (
    attention_received_weights,
    entropy_weights,
    normalize_in_spans,
    pool_spans,
    self_similarity_weights,
    token_mask_from_membership,
    uniform_weights,
)


def random_members(gen: torch.Generator, B: int, L: int, max_spans: int = 5):
    per_example = []
    for _ in range(B):
        n = int(torch.randint(0, max_spans + 1, (1,), generator=gen))
        spans = []
        for _ in range(n):
            k = int(torch.randint(0, 4, (1,), generator=gen))
            spans.append(sorted(set(torch.randint(0, L, (k,), generator=gen).tolist())))
        per_example.append(spans)
    return per_example


def loop_pool(hidden, per_example, weights):
    B, L, D = hidden.shape
    S = max([len(ex) for ex in per_example] + [1])
    centres = torch.zeros(B, S, D, dtype=torch.float64)
    mass = torch.zeros(B, S, dtype=torch.float64)
    for b, ex in enumerate(per_example):
        for s, toks in enumerate(ex):
            if not toks:
                continue
            w = [1.0 if weights is None else float(weights[b, t]) for t in toks]
            total = sum(w)
            mass[b, s] = total
            centres[b, s] = sum(wi * hidden[b, t] for wi, t in zip(w, toks)) / total
    return centres, mass


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(1, 4),
    L=st.integers(1, 12),
    uniform=st.booleans(),
    impl=st.sampled_from(["index_add", "sparse"]),
)
def test_pool_spans_matches_loop(seed, B, L, uniform, impl):
    gen = torch.Generator().manual_seed(seed)
    D = 5
    hidden = torch.randn(B, L, D, generator=gen, dtype=torch.float64)
    weights = None if uniform else torch.rand(B, L, generator=gen, dtype=torch.float64) + 0.01
    per_example = random_members(gen, B, L)
    m = collate_membership(per_example, seq_len=L)
    centres, mass = pool_spans(hidden, m, weights, impl=impl)
    ref_c, ref_m = loop_pool(hidden, per_example, weights)
    assert centres.dtype == torch.float64
    torch.testing.assert_close(centres, ref_c, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(mass, ref_m)


@pytest.mark.parametrize("impl", ["auto", "index_add", "sparse"])
def test_pool_spans_with_left_padding_and_empty_spans(impl):
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float64).view(2, 4, 2)
    # example 1 is left-padded by 2: its tokens 0, 1 sit at positions 2, 3
    m = collate_membership([[[0, 1], []], [[0, 1]]], seq_len=4, pad_left=[0, 2])
    centres, mass = pool_spans(hidden, m, impl=impl)
    torch.testing.assert_close(centres[0, 0], (hidden[0, 0] + hidden[0, 1]) / 2)
    torch.testing.assert_close(centres[1, 0], (hidden[1, 2] + hidden[1, 3]) / 2)
    assert torch.equal(centres[0, 1], torch.zeros(2, dtype=torch.float64)) and mass[0, 1] == 0
    assert torch.equal(centres[1, 1], torch.zeros(2, dtype=torch.float64)) and mass[1, 1] == 0
    assert m.span_mask.tolist() == [[True, False], [True, False]]


@pytest.mark.parametrize("impl", ["index_add", "sparse"])
def test_pool_spans_gradient_matches_formula(impl):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 6, generator=gen, dtype=torch.float64)
    per_example = [[[0, 2], [2, 3, 5]], [[1]]]
    m = collate_membership(per_example, seq_len=6)
    centres, _ = pool_spans(hidden, m, weights, impl=impl)
    centres.sum().backward()
    # d(sum of centres)/dh[b,t] = sum over spans containing t of w_t / mass(span), for every feature
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for b, ex in enumerate(per_example):
        for toks in ex:
            total = sum(float(weights[b, t]) for t in toks)
            for t in toks:
                expected[b, t] += float(weights[b, t]) / total
    torch.testing.assert_close(hidden.grad, expected[..., None].expand(2, 6, 3))
    assert torch.autograd.gradcheck(
        lambda h: pool_spans(h, m, weights, impl=impl)[0], (hidden.detach().requires_grad_(),), eps=1e-6
    )


def test_pool_spans_bf16_is_accumulated_in_float32_and_checks_shapes():
    hidden = torch.randn(1, 3, 4).to(torch.bfloat16)
    m = collate_membership([[[0, 1, 2]]], seq_len=3)
    for impl in ("index_add", "sparse"):
        centres, mass = pool_spans(hidden, m, impl=impl)
        assert centres.dtype == torch.float32
        torch.testing.assert_close(centres[0, 0], hidden[0].float().mean(0))
    with pytest.raises(ValueError, match="seq_len=3"):
        pool_spans(torch.randn(1, 5, 4), m)
    with pytest.raises(ValueError, match="weights must have shape"):
        pool_spans(torch.randn(1, 3, 4), m, torch.ones(3))
    with pytest.raises(ValueError, match="index_add, sparse"):
        pool_spans(torch.randn(1, 3, 4), m, impl="segment")


def loop_self_similarity(hidden, mask):
    """§2.2 on the valid tokens of each sample only, with -inf on the diagonal (float64)."""
    B, L, D = hidden.shape
    out = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        idx = [t for t in range(L) if mask[b, t]]
        if len(idx) < 2:
            continue
        h = hidden[b, idx].double()
        hn = h / (h.std(dim=-1, keepdim=True) + 1e-5)
        scores = hn @ hn.T / math.sqrt(D)
        scores.fill_diagonal_(float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        for j, t in enumerate(idx):
            out[b, t] = attn[:, j].mean()
    return out


def make_mask(lengths, L, left=False):
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, L - n :] = 1
        else:
            mask[b, :n] = 1
    return mask


@pytest.mark.parametrize("left", [False, True])
def test_self_similarity_weights_match_formula(left):
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 9, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = make_mask([9, 5, 1, 0], 9, left=left)
    w = self_similarity_weights(hidden, mask)
    assert not w.requires_grad and w.dtype == torch.float32
    torch.testing.assert_close(w.double(), loop_self_similarity(hidden.detach(), mask), rtol=1e-5, atol=1e-7)
    sums = w.sum(dim=1)
    torch.testing.assert_close(sums[:2], torch.ones(2), rtol=1e-5, atol=1e-6)  # >= 2 real tokens
    assert sums[2] == 0 and sums[3] == 0  # one or no real token: nothing to attend to
    assert torch.all(w[mask == 0] == 0)


def test_self_similarity_weights_over_all_query_rows_give_nothing_to_a_lone_token():
    """query_rows="all": the row of a sample's only real token has no key but itself (the reference's
    softmax of all -inf is NaN there) and counts 0; the 5 padding rows each put all their mass on that
    token, so it gets 5/6. Padding columns get 0 and the rows of a longer sample all count."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    mask = make_mask([1, 4], 6)
    w = self_similarity_weights(hidden, mask, "all")
    torch.testing.assert_close(w[0, 0], torch.tensor(5 / 6), rtol=1e-6, atol=1e-7)
    assert torch.all(w[0, 1:] == 0) and torch.all(w[1, 4:] == 0)
    # sample 1: every one of the 6 query rows has a real key, so the 4 real columns sum to 6/6
    torch.testing.assert_close(w[1].sum(), torch.tensor(1.0), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(w).all()


def test_self_similarity_weights_ignore_what_sits_in_padding():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 7, 8, generator=gen)
    mask = make_mask([4], 7)
    other = hidden.clone()
    other[0, 4:] = torch.randn(3, 8, generator=gen) * 100
    torch.testing.assert_close(self_similarity_weights(hidden, mask), self_similarity_weights(other, mask))


def test_attention_received_weights_match_loop():
    gen = torch.Generator().manual_seed(3)
    B, H, L = 3, 2, 6
    mask = make_mask([6, 4, 2], L)
    scores = torch.randn(B, H, L, L, generator=gen)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal[None, None] & mask.bool()[:, None, None, :]
    attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    w = attention_received_weights(attn.clone().requires_grad_(), mask)
    assert not w.requires_grad
    ref = torch.zeros(B, L)
    for b in range(B):
        rows = [i for i in range(L) if mask[b, i]]
        for j in rows:
            ref[b, j] = sum(float(attn[b, h, i, j]) for h in range(H) for i in rows) / (H * len(rows))
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(w.sum(1), torch.ones(B))


def test_entropy_weights_match_categorical_and_chunking():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 7, 11, generator=gen) * 3
    logits[0, 0] = torch.tensor([50.0] + [-50.0] * 10)  # nearly one-hot: weight ~1
    logits[0, 1] = 0.0  # uniform: weight 0
    mask = make_mask([7, 3], 7)
    ref = torch.zeros(2, 7)
    for b in range(2):
        for t in range(7):
            if mask[b, t]:
                h = torch.distributions.Categorical(logits=logits[b, t].double()).entropy()
                ref[b, t] = 1 - float(h) / math.log(11)
    for chunk in (1, 3, 64):
        w = entropy_weights(logits.to(torch.bfloat16).float(), mask, chunk_size=chunk)
        torch.testing.assert_close(w, entropy_weights(logits.to(torch.bfloat16).float(), mask, chunk_size=64))
    w = entropy_weights(logits, mask, chunk_size=3)
    torch.testing.assert_close(w, ref, atol=1e-5, rtol=1e-5)
    assert abs(float(w[0, 1])) < 1e-6 and float(w[0, 0]) > 0.999
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_weights(logits, mask, chunk_size=0)


def test_uniform_weights_and_in_span_normalization():
    mask = make_mask([5, 3, 4], 6)
    assert torch.equal(uniform_weights(mask), mask.float())
    per_example = [[[0, 1], [1, 4]], [[2]], []]
    m = collate_membership(per_example, seq_len=6)
    inside = token_mask_from_membership(m, 3, 6)
    expected_inside = torch.zeros(3, 6, dtype=torch.bool)
    for b, ex in enumerate(per_example):
        for toks in ex:
            expected_inside[b, toks] = True
    assert torch.equal(inside, expected_inside)

    weights = torch.rand(3, 6, generator=torch.Generator().manual_seed(5)) * mask
    w = normalize_in_spans(weights, m)
    for b in range(3):
        total = sum(float(weights[b, t]) for t in range(6) if expected_inside[b, t])
        for t in range(6):
            want = float(weights[b, t]) / total if expected_inside[b, t] else 0.0
            assert abs(float(w[b, t]) - want) < 1e-6
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 0.0]))


def test_pool_spans_weight_gradient_is_the_same_for_both_impls():
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    m = collate_membership([[[0, 1], [1, 2, 4]], [[3]]], seq_len=5)
    grads = []
    for impl in ("index_add", "sparse"):
        weights = (
            torch.rand(2, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.1
        ).requires_grad_()
        centres, mass = pool_spans(hidden, m, weights, impl=impl)
        (centres.square().sum() + mass.sum()).backward()
        grads.append(weights.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("impl", ["index_add", "sparse"])
def test_pool_spans_under_cpu_bf16_autocast_stays_float32_and_backpropagates(impl):
    """Autocast must not reach the span sums: inside ``torch.autocast("cpu", bf16)`` the result and
    the gradient equal the float32 computation on the same bf16 states (issue 13 item 5)."""
    gen = torch.Generator().manual_seed(3)
    m = collate_membership([[[0, 1, 2], [1, 3]], [[2], [0, 1, 2, 3]]], seq_len=4)
    hidden = torch.randn(2, 4, 5, generator=gen).to(torch.bfloat16)
    weights = torch.rand(2, 4, generator=gen)

    def loss(h):
        centres, mass = pool_spans(h, m, weights, impl=impl)
        return centres, (centres.pow(2).sum(-1) * mass).sum()

    h_ac = hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        centres_ac, total_ac = loss(h_ac)
    total_ac.backward()
    h_ref = hidden.float().requires_grad_()
    centres_ref, total_ref = loss(h_ref)
    total_ref.backward()
    assert centres_ac.dtype == torch.float32 and h_ac.grad.dtype == torch.bfloat16
    torch.testing.assert_close(centres_ac, centres_ref)
    # the gradient reaches the bf16 states; equal to the float32 one up to bf16 rounding (1 ulp = 2^-8)
    torch.testing.assert_close(h_ac.grad.float(), h_ref.grad, rtol=2**-7, atol=1e-3)
