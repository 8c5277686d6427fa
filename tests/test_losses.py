"""Token-level divergences and cross-entropy against float64 references written from the formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distillkit.losses import DIVERGENCES, cross_entropy, fkl, get_divergence, rkl, skl, srkl
from distillkit.losses.divergences import REDUCTIONS

NAMES = sorted(DIVERGENCES)


# --------------------------------------------------------------------------------------------
# float64 references, one row (one token) at a time, straight from the definitions
# --------------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0))


def _akl(p: np.ndarray, q: np.ndarray, mu: float) -> float:
    order = sorted(range(len(p)), key=lambda v: p[v])  # ascending teacher probability
    cumulative, g_head, g_tail = 0.0, 0.0, 0.0
    for v in order:
        cumulative += p[v]
        if cumulative <= mu:
            g_tail += abs(p[v] - q[v])
        else:
            g_head += abs(p[v] - q[v])
    return g_head / (g_head + g_tail) * _kl(p, q) + g_tail / (g_head + g_tail) * _kl(q, p)


def _reference_row(name: str, s_row: np.ndarray, t_row: np.ndarray, temperature: float, **params) -> float:
    q = _softmax(s_row.astype(np.float64) / temperature)
    p = _softmax(t_row.astype(np.float64) / temperature)
    lam = params.get("skew_lambda", 0.1)
    if name == "fkl":
        return _kl(p, q)
    if name == "rkl":
        return _kl(q, p)
    if name == "js":
        m = (p + q) / 2
        return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    if name == "tvd":
        return 0.5 * float(np.abs(p - q).sum())
    if name == "skl":
        return _kl(p, lam * p + (1 - lam) * q)
    if name == "srkl":
        return _kl(q, (1 - lam) * p + lam * q)
    if name == "akl":
        return _akl(p, q, params.get("mu", 0.5))
    raise AssertionError(name)


def _reference(name, student, teacher, mask, temperature, reduction, **params):
    """Per-token loop over a (B, L, V) grid, then the reduction contract."""
    s, t = student.double().numpy(), teacher.double().numpy()
    m = mask.numpy()
    per_token = np.zeros(m.shape)
    for b in range(m.shape[0]):
        for i in range(m.shape[1]):
            if m[b, i]:
                per_token[b, i] = _reference_row(name, s[b, i], t[b, i], temperature, **params)
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / max(int(m.sum()), 1)


def _random_case(seed: int, shape=(3, 5, 11), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g) * scale
    teacher = torch.randn(*shape, generator=g) * scale
    mask = torch.rand(shape[:-1], generator=g) < 0.6
    mask.view(-1)[0] = True  # at least one counted token
    return student, teacher, mask


# --------------------------------------------------------------------------------------------
# golden values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_divergence_matches_float64_reference(name, temperature, reduction):
    seed = 100 * NAMES.index(name) + 10 * int(temperature) + REDUCTIONS.index(reduction)
    student, teacher, mask = _random_case(seed=seed)
    got = DIVERGENCES[name](student, teacher, mask, temperature=temperature, reduction=reduction)
    want = _reference(name, student, teacher, mask, temperature, reduction)
    assert got.dtype == torch.float32
    if reduction == "none":
        assert got.shape == mask.shape
        assert torch.all(got[~mask] == 0)
    np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name,params", [("skl", {"skew_lambda": 0.3}), ("srkl", {"skew_lambda": 0.7})])
def test_skew_parameter_reaches_the_formula(name, params):
    student, teacher, mask = _random_case(seed=5)
    got = DIVERGENCES[name](student, teacher, mask, reduction="sum", **params)
    want = _reference(name, student, teacher, mask, 1.0, "sum", **params)
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


@pytest.mark.parametrize("mu", [0.1, 0.5, 0.9])
def test_akl_mu_reaches_the_formula(mu):
    student, teacher, mask = _random_case(seed=6)
    got = DIVERGENCES["akl"](student, teacher, mask, reduction="none", mu=mu)
    want = _reference("akl", student, teacher, mask, 1.0, "none", mu=mu)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-6)


def test_flat_n_by_v_inputs_and_no_mask():
    student, teacher, _ = _random_case(seed=7, shape=(6, 9))
    for name in NAMES:
        got = DIVERGENCES[name](student, teacher, None, reduction="none")
        want = [_reference_row(name, student[i].numpy(), teacher[i].numpy(), 1.0) for i in range(6)]
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-6)


def test_kl_direction_on_a_hand_made_example():
    p = [0.7, 0.2, 0.1]  # teacher
    q = [0.2, 0.5, 0.3]  # student
    kl_pq = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    kl_qp = 0.2 * math.log(0.2 / 0.7) + 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.1)
    assert abs(kl_pq - kl_qp) > 0.04  # the example does tell the directions apart
    teacher = torch.tensor([p]).log()
    student = torch.tensor([q]).log()
    assert float(fkl(student, teacher)) == pytest.approx(kl_pq, rel=1e-5)
    assert float(rkl(student, teacher)) == pytest.approx(kl_qp, rel=1e-5)


# --------------------------------------------------------------------------------------------
# reduction contract, chunking, masks, dtypes, gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunking_gives_the_same_values_and_gradients(name, chunk_size):
    student, teacher, mask = _random_case(seed=11)
    fn = DIVERGENCES[name]
    for reduction in REDUCTIONS:
        a = student.clone().requires_grad_(True)
        b = student.clone().requires_grad_(True)
        whole = fn(a, teacher, mask, temperature=2.0, reduction=reduction)
        chunked = fn(b, teacher, mask, temperature=2.0, reduction=reduction, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
        # an uneven upstream gradient, so each token's gradient must land on its own row
        upstream = torch.rand(whole.shape, generator=torch.Generator().manual_seed(1))
        (whole * upstream).sum().backward()
        (chunked * upstream).sum().backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


def test_chunking_bounds_what_autograd_keeps():
    """With chunk_size, autograd keeps no new (N, V)-sized intermediates: chunks are recomputed."""
    n, vocab, chunk = 12, 50, 3
    student = torch.randn(n, vocab, requires_grad=True)
    teacher = torch.randn(n, vocab)
    inputs = {student.untyped_storage().data_ptr(), teacher.untyped_storage().data_ptr()}
    some = torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.8
    for name, mask in itertools.product(NAMES, (None, some)):
        counted = n if mask is None else int(mask.sum())
        kept = {}
        for chunk_size in (None, chunk):
            new_storages: dict[int, int] = {}

            def pack(t, new_storages=new_storages):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in inputs:
                    new_storages[ptr] = t.numel()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = DIVERGENCES[name](student, teacher, mask, reduction="sum", chunk_size=chunk_size)
            loss.backward()
            kept[chunk_size] = sum(new_storages.values())
        assert kept[None] >= counted * vocab, (name, kept)  # the probe does see full-size intermediates
        assert kept[chunk] <= chunk * vocab, (name, kept)


@pytest.mark.parametrize("name", NAMES)
def test_masked_tokens_do_not_influence_the_result(name):
    student, teacher, mask = _random_case(seed=13)
    fn = DIVERGENCES[name]
    base = {r: fn(student, teacher, mask, reduction=r) for r in REDUCTIONS}
    s2, t2 = student.clone(), teacher.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), student.shape[-1]) * 50
    t2[~mask] = torch.randn(int((~mask).sum()), student.shape[-1]) * 50
    for r in REDUCTIONS:
        assert torch.equal(fn(s2, t2, mask, reduction=r), base[r])


@pytest.mark.parametrize("name", NAMES)
def test_zero_counted_tokens_give_a_zero_attached_to_the_graph(name):
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for reduction in ("mean", "sum"):
        loss = DIVERGENCES[name](student, teacher, mask, reduction=reduction)
        assert loss.shape == () and float(loss.detach()) == 0.0
        assert loss.requires_grad
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.all(grad == 0)
    none = DIVERGENCES[name](student, teacher, mask, reduction="none")
    assert none.shape == (2, 3) and torch.all(none == 0)


@pytest.mark.parametrize("name", NAMES)
def test_mean_is_sum_over_counted_tokens(name):
    student, teacher, mask = _random_case(seed=17)
    fn = DIVERGENCES[name]
    total = fn(student, teacher, mask, reduction="sum")
    per_token = fn(student, teacher, mask, reduction="none")
    torch.testing.assert_close(per_token.sum(), total)
    torch.testing.assert_close(fn(student, teacher, mask, reduction="mean"), total / mask.sum())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_inputs_are_upcast_and_match_float32(name):
    student, teacher, mask = _random_case(seed=19)
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    got = DIVERGENCES[name](s16, t16, mask, temperature=2.0, reduction="none")
    assert got.dtype == torch.float32
    # same bf16-rounded logits, evaluated in float32: the upcast must make them agree closely
    want32 = DIVERGENCES[name](s16.float(), t16.float(), mask, temperature=2.0, reduction="none")
    torch.testing.assert_close(got, want32, rtol=1e-6, atol=1e-7)
    # and against the unrounded float32 logits, within bf16 input rounding
    full = DIVERGENCES[name](student, teacher, mask, temperature=2.0, reduction="mean")
    mean16 = DIVERGENCES[name](s16, t16, mask, temperature=2.0, reduction="mean")
    assert float(mean16) == pytest.approx(float(full), rel=5e-2, abs=5e-3)
    s_req = s16.clone().requires_grad_(True)
    DIVERGENCES[name](s_req, t16, mask).backward()
    assert s_req.grad.dtype == torch.bfloat16 and torch.isfinite(s_req.grad.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_and_never_the_teacher(name):
    student, teacher, mask = _random_case(seed=23)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    DIVERGENCES[name](student, teacher, mask).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad[mask].abs().sum() > 0
    assert torch.all(student.grad[~mask] == 0)


def test_fkl_gradient_matches_the_closed_form():
    """d/ds sum_v p log(p/q) with q = softmax(s/T) is (q - p) / T per counted token (mean: / count)."""
    student, teacher, mask = _random_case(seed=29)
    student.requires_grad_(True)
    fkl(student, teacher, mask, temperature=2.0, reduction="sum").backward()
    q = torch.softmax(student.detach().double() / 2.0, -1)
    p = torch.softmax(teacher.double() / 2.0, -1)
    want = torch.where(mask.unsqueeze(-1), (q - p) / 2.0, 0.0)
    torch.testing.assert_close(student.grad.double(), want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------------
_logit_rows = st.integers(1, 4).flatmap(
    lambda n: st.integers(2, 9).flatmap(
        lambda v: st.tuples(
            arrays(np.float32, (n, v), elements=st.floats(-8, 8, width=32)),
            arrays(np.float32, (n, v), elements=st.floats(-8, 8, width=32)),
            arrays(np.float32, (n, 1), elements=st.floats(-20, 20, width=32)),
        )
    )
)


@settings(max_examples=25, deadline=None)
@given(case=_logit_rows, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_properties_of_every_divergence(case, temperature):
    s_np, t_np, shift_np = case
    student, teacher, shift = map(torch.from_numpy, (s_np, t_np, shift_np))
    for name, fn in DIVERGENCES.items():
        same = fn(teacher, teacher, None, temperature=temperature, reduction="none")
        assert torch.all(same.abs() <= 1e-5), (name, same)
        value = fn(student, teacher, None, temperature=temperature, reduction="none")
        assert torch.all(value >= -1e-6), (name, value)
        # a constant added to a row's logits changes nothing (on either side)
        shifted = fn(student + shift, teacher - shift, None, temperature=temperature, reduction="none")
        torch.testing.assert_close(shifted, value, rtol=1e-4, atol=2e-5)
        if name == "tvd":
            assert torch.all(value <= 1 + 1e-6)
        if name == "js":
            assert torch.all(value <= math.log(2) + 1e-6)


@settings(max_examples=20, deadline=None)
@given(case=_logit_rows)
def test_skew_divergences_reduce_to_their_definitions(case):
    s_np, t_np, _ = case
    student, teacher = torch.from_numpy(s_np), torch.from_numpy(t_np)

    def none(fn, **kw):
        return fn(student, teacher, None, reduction="none", **kw)

    torch.testing.assert_close(none(skl, skew_lambda=0.0), none(fkl))
    torch.testing.assert_close(none(srkl, skew_lambda=0.0), none(rkl))
    assert torch.all(none(skl, skew_lambda=1.0).abs() <= 1e-6)
    assert torch.all(none(srkl, skew_lambda=1.0).abs() <= 1e-6)
    # skewing towards the other side can only bring the two distributions closer (convexity of KL)
    assert torch.all(none(skl, skew_lambda=0.5) <= none(fkl) + 1e-5)
    assert torch.all(none(srkl, skew_lambda=0.5) <= none(rkl) + 1e-5)


@settings(max_examples=20, deadline=None)
@given(case=_logit_rows)
def test_akl_lies_between_forward_and_reverse_kl(case):
    s_np, t_np, _ = case
    student, teacher = torch.from_numpy(s_np), torch.from_numpy(t_np)
    a = DIVERGENCES["akl"](student, teacher, None, reduction="none")
    f = fkl(student, teacher, None, reduction="none")
    r = rkl(student, teacher, None, reduction="none")
    assert torch.all(a >= torch.minimum(f, r) - 1e-5)
    assert torch.all(a <= torch.maximum(f, r) + 1e-5)
    # mu = 0: the tail is empty, so AKL is the pure forward KL
    torch.testing.assert_close(DIVERGENCES["akl"](student, teacher, None, reduction="none", mu=0.0), f)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_get_divergence():
    assert get_divergence("fkl") is fkl
    with pytest.raises(ValueError, match="nonsense") as info:
        get_divergence("nonsense")
    for name in NAMES:
        assert name in str(info.value)


def test_bad_arguments_are_named_with_the_valid_choices():
    student, teacher, mask = _random_case(seed=31)
    with pytest.raises(ValueError, match=r"reduction='avg'.*'mean', 'sum', 'none'"):
        fkl(student, teacher, mask, reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        fkl(student, teacher[..., :-1], mask)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\)"):
        fkl(student, teacher, mask[:, :4])
    with pytest.raises(ValueError, match="temperature=0"):
        fkl(student, teacher, mask, temperature=0)
    with pytest.raises(ValueError, match="chunk_size=0"):
        fkl(student, teacher, mask, chunk_size=0)
    with pytest.raises(ValueError, match="skew_lambda=1.5"):
        skl(student, teacher, mask, skew_lambda=1.5)
    with pytest.raises(ValueError, match="mu=-0.1"):
        DIVERGENCES["akl"](student, teacher, mask, mu=-0.1)
    with pytest.raises(ValueError, match="dtype torch.float32"):
        fkl(student, teacher, mask.float())
    with pytest.raises(TypeError):
        fkl(student, teacher, mask, skew_lambda=0.1)  # fkl has no such parameter


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------
def _ce_reference(logits: torch.Tensor, labels: torch.Tensor, reduction: str):
    x, y = logits.double().numpy(), labels.numpy()
    per_token = np.zeros(y.shape)
    for index in np.ndindex(*y.shape):
        if y[index] != -100:
            row = x[index]
            per_token[index] = -(row[y[index]] - row.max() - math.log(np.exp(row - row.max()).sum()))
    count = int((y != -100).sum())
    return {"none": per_token, "sum": per_token.sum(), "mean": per_token.sum() / max(count, 1)}[reduction]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_cross_entropy_matches_reference(reduction, chunk_size):
    g = torch.Generator().manual_seed(37)
    logits = (torch.randn(3, 6, 13, generator=g) * 4).bfloat16()
    labels = torch.randint(0, 13, (3, 6), generator=g)
    labels[torch.rand(3, 6, generator=g) < 0.4] = -100
    got = cross_entropy(logits, labels, reduction=reduction, chunk_size=chunk_size)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _ce_reference(logits, labels, reduction), rtol=1e-5, atol=1e-6)


def test_cross_entropy_all_ignored_and_bad_input():
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss = cross_entropy(logits, labels)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)
    with pytest.raises(ValueError, match="reduction='max'"):
        cross_entropy(logits, labels, reduction="max")
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(logits, labels[:, :3])


def test_cross_entropy_chunked_gradient_matches_the_closed_form():
    """d CE / d logits = softmax - one_hot(label) on counted rows, 0 on ignored ones."""
    g = torch.Generator().manual_seed(41)
    logits = torch.randn(2, 5, 9, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    labels[0, 1] = labels[1, 3] = -100
    upstream = torch.rand(2, 5, generator=g)
    (cross_entropy(logits, labels, reduction="none", chunk_size=3) * upstream).sum().backward()
    counted = labels.ne(-100)
    one_hot = torch.nn.functional.one_hot(labels.clamp_min(0), 9).double()
    want = (torch.softmax(logits.detach().double(), -1) - one_hot) * (upstream * counted).unsqueeze(-1)
    torch.testing.assert_close(logits.grad.double(), want, rtol=1e-5, atol=1e-7)
