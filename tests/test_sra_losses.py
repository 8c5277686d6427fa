"""SRA's span losses (distillkit.losses.sra) against float64 loop references written here from
ctkd.md §2.4, plus the properties of ctkd.md §5.4 (items 1, 2, 4, 7, 8, 9)."""

from __future__ import annotations

import math

import pytest
import torch

from distillkit.losses import dsa_loss, hra_loss
from distillkit.losses.sra import (
    com_loss,
    dynamics_loss,
    geometric_loss,
    salience,
    span_logit_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 1e-5


# --------------------------------------------------------------------------------------------
# float64 loop references (one sample, one span at a time)
# --------------------------------------------------------------------------------------------
def ref_cos(x, y, eps=EPS):
    """torch's cosine: each norm clamped at eps separately."""
    dot = sum(a * b for a, b in zip(x, y))
    nx = max(math.sqrt(sum(a * a for a in x)), eps)
    ny = max(math.sqrt(sum(b * b for b in y)), eps)
    return dot / (nx * ny)


def ref_unit(x, eps=EPS):
    n = max(math.sqrt(sum(a * a for a in x)), eps)
    return [a / n for a in x]


def ref_salience(mass, mask, power):
    p = max(power, 1e-5)
    out = []
    for b in range(len(mass)):
        num = [mass[b][u] ** p if mask[b][u] else 0.0 for u in range(len(mass[b]))]
        den = sum(num)
        out.append([n / den if den > 0 else 0.0 for n in num])
    return out


def ref_com(cs, ct, w, mask, distance):
    total = 0.0
    for b in range(len(cs)):
        for u in range(len(cs[b])):
            if not mask[b][u]:
                continue
            if distance == "cosine":
                d = 1.0 - ref_cos(cs[b][u], ct[b][u])
            else:
                d = sum((x - y) ** 2 for x, y in zip(cs[b][u], ct[b][u])) / len(cs[b][u])
            total += w[b][u] * d
    return total / len(cs)


def ref_geo(cs, ct, w, mask, normalization):
    num_all = den_all = per_sample = 0.0
    for b in range(len(cs)):
        valid = [u for u in range(len(cs[b])) if mask[b][u]]
        us = {u: ref_unit(cs[b][u]) for u in valid}
        ut = {u: ref_unit(ct[b][u]) for u in valid}
        num = den = 0.0
        for u in valid:
            for v in valid:
                if u == v:
                    continue
                gs = sum(x * y for x, y in zip(us[u], us[v]))
                gt = sum(x * y for x, y in zip(ut[u], ut[v]))
                num += w[b][u] * w[b][v] * (gs - gt) ** 2
                den += w[b][u] * w[b][v]
        per_sample += num / max(den, 1e-5)
        num_all += num
        den_all += den
    if normalization == "per_sample":
        return per_sample / len(cs)
    return num_all / den_all if den_all > 0 else 0.0


def ref_softmax(z, T):
    m = max(z)
    e = [math.exp((x - m) / T) for x in z]
    s = sum(e)
    return [x / s for x in e]


def ref_slog(zs, zt, mask, T, reduction):
    total, count = 0.0, 0
    for b in range(len(zs)):
        for u in range(len(zs[b])):
            if not mask[b][u]:
                continue
            p, q = ref_softmax(zt[b][u], T), ref_softmax(zs[b][u], T)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            count += 1
    if reduction == "per_sample_sum":
        return total / len(zs)
    return total / count if count else 0.0


def ref_dyn(cs, ct, mass, mask):
    K, B = len(cs), len(cs[0])
    total = 0.0
    for k in range(K - 1):
        for b in range(B):
            for u in range(len(cs[0][b])):
                if not mask[b][u]:
                    continue
                ds = [x1 - x0 for x1, x0 in zip(cs[k + 1][b][u], cs[k][b][u])]
                dt = [y1 - y0 for y1, y0 in zip(ct[k + 1][b][u], ct[k][b][u])]
                total += mass[k + 1][b][u] * (1.0 - ref_cos(ds, dt))
    return total / (B * (K - 1))


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
def make_mask():
    # sample 0: 4 spans; sample 1: 2 spans; sample 2: none; sample 3: 1 span (no pair for geo)
    return torch.tensor(
        [
            [True, True, True, True, False],
            [True, True, False, False, False],
            [False, False, False, False, False],
            [True, False, False, False, False],
        ]
    )


def make_inputs(seed=0, ds=6, dt=5, vocab=7, poison=True):
    g = torch.Generator().manual_seed(seed)
    mask = make_mask()
    B, S = mask.shape
    cs = torch.randn(B, S, ds, generator=g, dtype=torch.float64).float()
    cs_proj = torch.randn(B, S, dt, generator=g, dtype=torch.float64).float()
    ct = torch.randn(B, S, dt, generator=g, dtype=torch.float64).float()
    mass = torch.rand(B, S, generator=g, dtype=torch.float64).float()
    zs = (3 * torch.randn(B, S, vocab, generator=g, dtype=torch.float64)).float()
    zt = (3 * torch.randn(B, S, vocab, generator=g, dtype=torch.float64)).float()
    if poison:  # whatever the pooling leaves in padded slots must not matter
        for t in (cs, cs_proj, ct, zs, zt):
            t[~mask] = float("nan")
        mass[~mask] = 123.0
    return dict(mask=mask, cs=cs, cs_proj=cs_proj, ct=ct, mass=mass, zs=zs, zt=zt)


def L(t):
    return t.double().tolist()


# --------------------------------------------------------------------------------------------
# golden values against the loops
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0, 0.0])
def test_salience_matches_loop(power):
    x = make_inputs()
    w = salience(x["mass"], x["mask"], power=power)
    expected = torch.tensor(ref_salience(L(x["mass"]), x["mask"].tolist(), power), dtype=torch.float64)
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=1e-7)
    assert w.dtype == torch.float32 and not w.requires_grad
    sums = w.sum(1)
    torch.testing.assert_close(sums, torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert (w[~x["mask"]] == 0).all()


def test_salience_power_zero_is_the_reference_floor():
    mass = torch.tensor([[0.2, 0.0, 0.8]])
    mask = torch.tensor([[True, True, True]])
    w = salience(mass, mask, power=0.0)  # p = max(0, 1e-5): ~1/2 to the positive masses, 0 to the zero one
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.0, 0.5]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_com_loss_matches_loop(distance):
    x = make_inputs()
    w = salience(x["mass"], x["mask"])
    got = com_loss(x["cs_proj"], x["ct"], w, x["mask"], distance=distance)
    expected = ref_com(L(x["cs_proj"]), L(x["ct"]), L(w), x["mask"].tolist(), distance)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected > 0.05


@pytest.mark.parametrize("normalization", ["per_sample", "batch"])
def test_geometric_loss_matches_loop(normalization):
    x = make_inputs()
    w = salience(x["mass"], x["mask"])
    got = geometric_loss(x["cs"], x["ct"], w, x["mask"], normalization=normalization)
    expected = ref_geo(L(x["cs"]), L(x["ct"]), L(w), x["mask"].tolist(), normalization)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected > 0.01


def test_geometric_per_sample_and_batch_differ_and_pair_clamp_applies():
    x = make_inputs()
    w = salience(x["mass"], x["mask"])
    per_sample = geometric_loss(x["cs"], x["ct"], w, x["mask"])
    batch = geometric_loss(x["cs"], x["ct"], w, x["mask"], normalization="batch")
    assert abs(per_sample.item() - batch.item()) > 1e-4
    # a sample whose pair weights sum below 1e-5 is not renormalized (the reference's clamp)
    mask = torch.tensor([[True, True]])
    w_tiny = torch.tensor([[1.0 - 1e-7, 1e-7]])
    cs, ct = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    got = geometric_loss(cs, ct, w_tiny, mask)
    assert got.item() == pytest.approx(
        ref_geo(L(cs), L(ct), L(w_tiny), mask.tolist(), "per_sample"), rel=1e-4
    )


def test_geometric_batch_equals_dsa_loss():
    x = make_inputs()
    w = salience(x["mass"], x["mask"])
    for weights in (w, x["mass"]):  # the salience or raw masses: the same global normalization
        got = geometric_loss(x["cs"], x["ct"], weights, x["mask"], normalization="batch", eps=1e-8)
        torch.testing.assert_close(got, dsa_loss(x["cs"], x["ct"], weights, x["mask"], eps=1e-8))


@pytest.mark.parametrize("reduction", ["per_sample_sum", "mean_over_spans"])
@pytest.mark.parametrize("temperature", [2.0, 1.0, 0.5])
def test_span_logit_loss_matches_loop(reduction, temperature):
    x = make_inputs()
    got = span_logit_loss(x["zs"], x["zt"], x["mask"], temperature=temperature, reduction=reduction)
    expected = ref_slog(L(x["zs"]), L(x["zt"]), x["mask"].tolist(), temperature, reduction)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected > 0.05


def test_span_logit_kl_direction_hand_example():
    # 2 spans, 3-token shared vocabulary, T = 1 so the probabilities are the hand-picked ones
    p = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]  # teacher
    q = [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]  # student
    zt = torch.tensor([[[math.log(v) for v in row] for row in p]])
    zs = torch.tensor([[[math.log(v) for v in row] for row in q]])
    mask = torch.tensor([[True, True]])
    forward = sum(pi * math.log(pi / qi) for pr, qr in zip(p, q) for pi, qi in zip(pr, qr))
    reverse = sum(qi * math.log(qi / pi) for pr, qr in zip(p, q) for pi, qi in zip(pr, qr))
    got = span_logit_loss(zs, zt, mask, temperature=1.0)
    assert got.item() == pytest.approx(forward, rel=1e-5)  # KL(teacher || student), summed over spans / B
    assert abs(forward - reverse) > 0.1 and got.item() != pytest.approx(reverse, rel=1e-2)
    # T = 2 on the same logits: softmax(log p / 2) ∝ sqrt(p)
    got_t2 = span_logit_loss(zs, zt, mask, temperature=2.0)
    expected_t2 = ref_slog(zs.double().tolist(), zt.double().tolist(), [[True, True]], 2.0, "per_sample_sum")
    assert got_t2.item() == pytest.approx(expected_t2, rel=1e-5)


def test_span_logit_other_divergences_pass_through():
    x = make_inputs(poison=False)
    fkl = span_logit_loss(x["zs"], x["zt"], x["mask"])
    skl0 = span_logit_loss(x["zs"], x["zt"], x["mask"], divergence="skl", skew_lambda=0.0)
    skl = span_logit_loss(x["zs"], x["zt"], x["mask"], divergence="skl", skew_lambda=0.1)
    torch.testing.assert_close(skl0, fkl)
    assert skl.item() < fkl.item()


def test_dynamics_loss_matches_loop():
    g = torch.Generator().manual_seed(3)
    mask = make_mask()
    B, S = mask.shape
    K, D = 3, 4
    cs = [torch.randn(B, S, D, generator=g) for _ in range(K)]
    ct = [torch.randn(B, S, D, generator=g) for _ in range(K)]
    mass = [torch.rand(B, S, generator=g) * 2 for _ in range(K)]  # raw masses, not normalized
    for t in cs + ct:
        t[~mask] = float("nan")
    got = dynamics_loss(cs, ct, mass, mask)
    expected = ref_dyn([L(c) for c in cs], [L(c) for c in ct], [L(m) for m in mass], mask.tolist())
    assert got.item() == pytest.approx(expected, rel=1e-5)
    stacked = dynamics_loss(torch.stack(cs), torch.stack(ct), torch.stack(mass), mask)
    torch.testing.assert_close(stacked, got)
    with pytest.raises(ValueError, match="at least 2 mapped layer pairs, got K=1"):
        dynamics_loss(cs[:1], ct[:1], mass[:1], mask)


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------
def test_every_term_is_zero_at_identity():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    c = x["ct"]
    for distance in ("cosine", "mse"):
        assert com_loss(c.clone(), c, w, x["mask"], distance=distance).abs().item() < 1e-6
    for normalization in ("per_sample", "batch"):
        assert geometric_loss(c.clone(), c, w, x["mask"], normalization=normalization).abs().item() < 1e-6
    for reduction in ("per_sample_sum", "mean_over_spans"):
        assert span_logit_loss(x["zt"].clone(), x["zt"], x["mask"], reduction=reduction).abs().item() < 1e-6
    layers = [c, 2 * c + 1, c - 3]
    assert dynamics_loss(layers, layers, [x["mass"]] * 3, x["mask"]).abs().item() < 1e-6


def random_orthogonal(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q.float()


def test_geometric_invariances():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    base = geometric_loss(x["cs"], x["ct"], w, x["mask"])
    g = torch.Generator().manual_seed(5)
    scale_s = torch.rand(*x["mask"].shape, 1, generator=g) * 10 + 0.1
    scale_t = torch.rand(*x["mask"].shape, 1, generator=g) * 10 + 0.1
    rescaled = geometric_loss(x["cs"] * scale_s, x["ct"] * scale_t, w, x["mask"])
    torch.testing.assert_close(rescaled, base, rtol=1e-5, atol=1e-6)
    rotated = geometric_loss(x["cs"] @ random_orthogonal(x["cs"].shape[-1], 6), x["ct"], w, x["mask"])
    torch.testing.assert_close(rotated, base, rtol=1e-5, atol=1e-6)
    # and it does depend on the student geometry
    moved = geometric_loss(x["cs"] + torch.randn_like(x["cs"]), x["ct"], w, x["mask"])
    assert abs(moved.item() - base.item()) > 1e-4


def test_com_cosine_is_invariant_to_scaling_the_projector():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    P = torch.randn(x["cs"].shape[-1], x["ct"].shape[-1])
    base = com_loss(x["cs"] @ P, x["ct"], w, x["mask"])
    for alpha in (0.01, 3.0, 250.0):
        torch.testing.assert_close(com_loss(x["cs"] @ (alpha * P), x["ct"], w, x["mask"]), base)
    mse = com_loss(x["cs"] @ P, x["ct"], w, x["mask"], distance="mse")
    assert com_loss(x["cs"] @ (3 * P), x["ct"], w, x["mask"], distance="mse").item() > 2 * mse.item()


def test_span_logits_invariant_to_a_constant_per_span():
    x = make_inputs(poison=False)
    base = span_logit_loss(x["zs"], x["zt"], x["mask"])
    g = torch.Generator().manual_seed(7)
    shift_s = torch.randn(*x["mask"].shape, 1, generator=g) * 20
    shift_t = torch.randn(*x["mask"].shape, 1, generator=g) * 20
    torch.testing.assert_close(span_logit_loss(x["zs"] + shift_s, x["zt"] + shift_t, x["mask"]), base)


def test_permuting_the_batch_permutes_contributions_only():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    perm = torch.tensor([2, 0, 3, 1])
    take = {k: v[perm] for k, v in x.items()}
    w_p = salience(take["mass"], take["mask"])
    torch.testing.assert_close(w_p, w[perm])
    pairs = [
        (
            com_loss(x["cs_proj"], x["ct"], w, x["mask"]),
            com_loss(take["cs_proj"], take["ct"], w_p, take["mask"]),
        ),
        (
            geometric_loss(x["cs"], x["ct"], w, x["mask"]),
            geometric_loss(take["cs"], take["ct"], w_p, take["mask"]),
        ),
        (span_logit_loss(x["zs"], x["zt"], x["mask"]), span_logit_loss(take["zs"], take["zt"], take["mask"])),
    ]
    for a, b in pairs:
        torch.testing.assert_close(a, b)


def test_scale_check_com_with_one_token_spans_equals_hra_weighted_by_salience():
    # every sample has spans, one token per span: Σ_b Σ_u ŵ (1 − cos) / B = HRA's Σ ŵ (1 − cos) / Σ ŵ
    g = torch.Generator().manual_seed(8)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    w = salience(torch.rand(2, 3, generator=g), mask)
    torch.testing.assert_close(com_loss(s, t, w, mask), hra_loss(s, t, w, mask, eps=EPS))


def all_terms(x, w, cs, cs_proj, zs):
    mask = x["mask"]
    return {
        "com": com_loss(cs_proj, x["ct"], w, mask),
        "com_mse": com_loss(cs_proj, x["ct"], w, mask, distance="mse"),
        "geo": geometric_loss(cs, x["ct"], w, mask),
        "geo_batch": geometric_loss(cs, x["ct"], w, mask, normalization="batch"),
        "slog": span_logit_loss(zs, x["zt"], mask),
        "slog_mean": span_logit_loss(zs, x["zt"], mask, reduction="mean_over_spans"),
        "dyn": dynamics_loss([cs_proj, 2 * cs_proj], [x["ct"], x["ct"] + 1], [x["mass"]] * 2, mask),
    }


def test_padding_and_empty_samples_contribute_exactly_zero_with_finite_gradients():
    clean = make_inputs(poison=False)
    poisoned = make_inputs(poison=True)  # NaN features and a mass of 123 in every padded slot
    w = salience(clean["mass"], clean["mask"])
    torch.testing.assert_close(salience(poisoned["mass"], poisoned["mask"]), w)

    leaves = {k: poisoned[k].clone().requires_grad_(True) for k in ("cs", "cs_proj", "zs")}
    terms = all_terms(poisoned, w, leaves["cs"], leaves["cs_proj"], leaves["zs"])
    reference = all_terms(clean, w, clean["cs"], clean["cs_proj"], clean["zs"])
    for name, value in terms.items():
        torch.testing.assert_close(value, reference[name], msg=name)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        for leaf_name, grad in zip(leaves, grads):
            if grad is None:
                continue
            assert torch.isfinite(grad).all(), (name, leaf_name)
            assert (grad[~poisoned["mask"]] == 0).all(), (name, leaf_name)

    # the empty sample (index 2) changes nothing but the batch size the sums are divided by
    keep = torch.tensor([0, 1, 3])
    sub = {k: v[keep] for k, v in clean.items()}
    w_sub = salience(sub["mass"], sub["mask"])
    sub_terms = all_terms(sub, w_sub, sub["cs"], sub["cs_proj"], sub["zs"])
    for name in ("com", "com_mse", "geo", "slog", "dyn"):
        torch.testing.assert_close(reference[name] * 4, sub_terms[name] * 3, msg=name)
    for name in ("geo_batch", "slog_mean"):  # global normalizations: unchanged
        torch.testing.assert_close(reference[name], sub_terms[name], msg=name)


def test_all_empty_batch_gives_an_attached_zero():
    x = make_inputs(poison=True)
    x["mask"] = torch.zeros_like(x["mask"])
    w = salience(x["mass"], x["mask"])
    assert (w == 0).all()
    leaves = {k: x[k].clone().requires_grad_(True) for k in ("cs", "cs_proj", "zs")}
    for name, value in all_terms(x, w, leaves["cs"], leaves["cs_proj"], leaves["zs"]).items():
        assert value.item() == 0.0, name
        assert value.requires_grad, name
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        assert all(g is None or (g == 0).all() for g in grads), name


def test_no_gradient_reaches_the_teacher_side():
    x = make_inputs(poison=False)
    ct = x["ct"].clone().requires_grad_(True)
    zt = x["zt"].clone().requires_grad_(True)
    mass = x["mass"].clone().requires_grad_(True)
    cs = x["cs"].clone().requires_grad_(True)
    cs_proj = x["cs_proj"].clone().requires_grad_(True)
    zs = x["zs"].clone().requires_grad_(True)
    w = salience(mass, x["mask"])
    assert not w.requires_grad
    terms = [
        com_loss(cs_proj, ct, w, x["mask"]),
        geometric_loss(cs, ct, w, x["mask"]),
        span_logit_loss(zs, zt, x["mask"]),
        dynamics_loss([cs_proj, cs_proj * 2], [ct, ct * 2], [mass, mass], x["mask"]),
    ]
    for term in terms:
        grads = torch.autograd.grad(term, [ct, zt, mass], allow_unused=True)
        assert all(g is None for g in grads)
    total = sum(terms)
    total.backward()
    assert cs.grad is not None and cs_proj.grad is not None and zs.grad is not None


def test_bf16_inputs_are_upcast():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    half = {k: x[k].bfloat16() for k in ("cs", "cs_proj", "ct", "zs", "zt")}
    com16 = com_loss(half["cs_proj"], half["ct"], w, x["mask"])
    assert com16.dtype == torch.float32
    exact = com_loss(half["cs_proj"].float(), half["ct"].float(), w, x["mask"])
    torch.testing.assert_close(com16, exact)
    geo16 = geometric_loss(half["cs"], half["ct"], w, x["mask"])
    torch.testing.assert_close(geo16, geometric_loss(half["cs"].float(), half["ct"].float(), w, x["mask"]))
    slog16 = span_logit_loss(half["zs"], half["zt"], x["mask"])
    assert slog16.dtype == torch.float32


def test_bad_choices_and_shapes_fail_clearly():
    x = make_inputs(poison=False)
    w = salience(x["mass"], x["mask"])
    with pytest.raises(ValueError, match=r"distance='l1'.*\['cosine', 'mse'\]"):
        com_loss(x["cs_proj"], x["ct"], w, x["mask"], distance="l1")
    with pytest.raises(ValueError, match=r"normalization='global'.*\['per_sample', 'batch'\]"):
        geometric_loss(x["cs"], x["ct"], w, x["mask"], normalization="global")
    with pytest.raises(ValueError, match=r"reduction='sum'.*per_sample_sum"):
        span_logit_loss(x["zs"], x["zt"], x["mask"], reduction="sum")
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        span_logit_loss(x["zs"], x["zt"], x["mask"], divergence="kl")
    with pytest.raises(ValueError, match="temperature"):
        span_logit_loss(x["zs"], x["zt"], x["mask"], temperature=0.0)
    with pytest.raises(ValueError, match="power=-1"):
        salience(x["mass"], x["mask"], power=-1)
    with pytest.raises(ValueError, match="project the student"):
        com_loss(x["cs"], x["ct"], w, x["mask"])
    with pytest.raises(ValueError, match="same shared vocabulary"):
        span_logit_loss(x["zs"], x["zt"][..., :3], x["mask"])
    with pytest.raises(ValueError, match="bool"):
        salience(x["mass"], x["mask"].float())
