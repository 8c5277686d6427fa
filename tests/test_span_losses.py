"""Span losses (DSA, HRA, CoM alignment, RKD) against float64 loop references and invariances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillkit.losses import com_alignment_loss, dsa_loss, hra_loss, rkd_loss


# --------------------------------------------------------------------------------------------
# float64 references with explicit loops, straight from the formulas
# --------------------------------------------------------------------------------------------
def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _dsa_reference(student, teacher, mass, mask) -> float:
    s, t, m, valid = student.double().numpy(), teacher.double().numpy(), mass.double().numpy(), mask.numpy()
    num = den = 0.0
    for b in range(valid.shape[0]):
        for u in range(valid.shape[1]):
            for v in range(valid.shape[1]):
                if u != v and valid[b, u] and valid[b, v]:
                    w = m[b, u] * m[b, v]
                    diff = _cos(s[b, u], s[b, v]) - _cos(t[b, u], t[b, v])
                    num += w * diff**2
                    den += w
    return num / den if den > 0 else 0.0


def _weighted_reference(per_item, weights, mask) -> float:
    w, valid = weights.double().numpy(), mask.numpy()
    num = den = 0.0
    for b, i in itertools.product(range(valid.shape[0]), range(valid.shape[1])):
        if valid[b, i]:
            num += w[b, i] * per_item(b, i)
            den += w[b, i]
    return num / den if den > 0 else 0.0


def _hra_reference(student, teacher, weights, mask) -> float:
    s, t = student.double().numpy(), teacher.double().numpy()
    return _weighted_reference(lambda b, i: 1.0 - _cos(s[b, i], t[b, i]), weights, mask)


def _com_mse_reference(student, teacher, mass, mask) -> float:
    s, t = student.double().numpy(), teacher.double().numpy()
    return _weighted_reference(lambda b, i: float(np.mean((s[b, i] - t[b, i]) ** 2)), mass, mask)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_reference(student, teacher, mask, distance_weight=1.0, angle_weight=2.0) -> float:
    dist_terms, angle_terms = [], []
    for b in range(mask.shape[0]):
        idx = [u for u in range(mask.shape[1]) if mask[b, u]]
        xs = [student[b, u].double().numpy() for u in idx]
        xt = [teacher[b, u].double().numpy() for u in idx]
        pairs = [(i, j) for i in range(len(idx)) for j in range(len(idx)) if i != j]
        if not pairs:
            continue
        mean_s = np.mean([np.linalg.norm(xs[i] - xs[j]) for i, j in pairs])
        mean_t = np.mean([np.linalg.norm(xt[i] - xt[j]) for i, j in pairs])
        for i, j in pairs:
            ds = np.linalg.norm(xs[i] - xs[j]) / mean_s
            dt = np.linalg.norm(xt[i] - xt[j]) / mean_t
            dist_terms.append(_huber(ds - dt))
        for i, j, k in itertools.permutations(range(len(idx)), 3):  # angle at x_j
            cs = _cos(xs[i] - xs[j], xs[k] - xs[j])
            ct = _cos(xt[i] - xt[j], xt[k] - xt[j])
            angle_terms.append(_huber(cs - ct))
    distance = float(np.mean(dist_terms)) if dist_terms else 0.0
    angle = float(np.mean(angle_terms)) if angle_terms else 0.0
    return distance_weight * distance + angle_weight * angle


def _case(seed: int, b=3, n=6, ds=5, dt=8, same_width=False):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, n, ds, generator=g)
    teacher = torch.randn(b, n, dt if not same_width else ds, generator=g)
    weights = torch.rand(b, n, generator=g) + 0.05
    mask = torch.rand(b, n, generator=g) < 0.7
    mask[0, :3] = True  # at least one sample with a few valid entries
    return student, teacher, weights, mask


def _random_isometry(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    """A (d_out, d_in) matrix with orthonormal columns: a rotation when d_in == d_out, else an embedding."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
    return q.float()


# --------------------------------------------------------------------------------------------
# DSA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_dsa_matches_loop_reference(seed):
    student, teacher, mass, mask = _case(seed)
    got = dsa_loss(student, teacher, mass, mask)
    assert float(got) > 0
    assert float(got) == pytest.approx(_dsa_reference(student, teacher, mass, mask), rel=1e-5, abs=1e-7)


def test_dsa_is_zero_under_rotation_scale_and_embedding():
    student, _, mass, mask = _case(1, ds=6)
    assert float(dsa_loss(student, student.clone(), mass, mask)) == pytest.approx(0.0, abs=1e-6)
    rotation = _random_isometry(6, 6, seed=2)
    assert float(dsa_loss(student, 3.7 * student @ rotation.T, mass, mask)) == pytest.approx(0.0, abs=1e-6)
    # a teacher of another width: the student embedded by an orthonormal map, each span rescaled
    embed = _random_isometry(6, 11, seed=3)
    scales = torch.rand(*mask.shape, 1) * 5 + 0.1
    teacher = scales * (student @ embed.T)
    assert teacher.shape[-1] == 11
    assert float(dsa_loss(student, teacher, mass, mask)) == pytest.approx(0.0, abs=1e-6)
    # a different teacher is not zero: the invariance checks above can fail
    assert float(dsa_loss(student, torch.randn_like(teacher), mass, mask)) > 1e-2


def test_dsa_handles_samples_with_zero_or_one_valid_span():
    student, teacher, mass, _ = _case(4, b=3, n=5)
    mask = torch.tensor(
        [[False] * 5, [False, False, True, False, False], [True, True, False, True, True]], dtype=torch.bool
    )
    student[~mask] = float("nan")  # whatever pooling left in padded slots must not leak
    mass = torch.where(mask, mass, torch.full_like(mass, float("nan")))
    student.requires_grad_(True)
    got = dsa_loss(student, teacher, mass, mask)
    only_last = _dsa_reference(student.detach()[2:], teacher[2:], mass[2:], mask[2:])
    assert float(got.detach()) == pytest.approx(only_last, rel=1e-5)
    got.backward()
    assert torch.isfinite(student.grad).all()
    assert torch.all(student.grad[~mask] == 0) and student.grad[2].abs().sum() > 0

    nothing = dsa_loss(student, teacher, mass, torch.zeros_like(mask))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad
    nothing.backward()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7))
def test_dsa_is_bounded(seed, n):
    student, teacher, mass, mask = _case(seed, n=n)
    value = float(dsa_loss(student, teacher, mass, mask))
    assert 0.0 <= value <= 4.0 + 1e-6  # cosines lie in [-1, 1]


# --------------------------------------------------------------------------------------------
# HRA and CoM alignment
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_hra_matches_loop_reference(seed):
    student, teacher, weights, mask = _case(seed, same_width=True)
    got = hra_loss(student, teacher, weights, mask)
    assert float(got) == pytest.approx(_hra_reference(student, teacher, weights, mask), rel=1e-5)


def test_hra_is_zero_for_equal_or_positively_scaled_student():
    _, teacher, weights, mask = _case(7, same_width=True, ds=8)
    assert float(hra_loss(teacher.clone(), teacher, weights, mask)) == pytest.approx(0.0, abs=1e-6)
    scales = torch.rand(*mask.shape, 1) * 4 + 0.2
    assert float(hra_loss(scales * teacher, teacher, weights, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(hra_loss(-teacher, teacher, weights, mask)) == pytest.approx(2.0, abs=1e-5)


def test_hra_and_com_ignore_padding_and_handle_empty_samples():
    student, teacher, weights, _ = _case(16, same_width=True, n=4)
    mask = torch.tensor([[False] * 4, [True, False, False, False], [True, True, False, True]])
    student[~mask] = float("nan")
    weights = torch.where(mask, weights, torch.full_like(weights, float("nan")))
    student.requires_grad_(True)
    for loss_fn in (hra_loss, com_alignment_loss):
        got = loss_fn(student, teacher, weights, mask)
        want = _hra_reference(student.detach()[1:], teacher[1:], weights[1:], mask[1:])
        assert float(got.detach()) == pytest.approx(want, rel=1e-5)
        (grad,) = torch.autograd.grad(got, student)
        assert torch.isfinite(grad).all() and torch.all(grad[~mask] == 0)
        empty = loss_fn(student, teacher, weights, torch.zeros_like(mask))
        assert float(empty.detach()) == 0.0 and empty.requires_grad


@pytest.mark.parametrize("seed", range(3))
def test_com_alignment_matches_loop_reference(seed):
    student, teacher, mass, mask = _case(seed, same_width=True)
    cosine = com_alignment_loss(student, teacher, mass, mask)
    assert float(cosine) == pytest.approx(_hra_reference(student, teacher, mass, mask), rel=1e-5)
    mse = com_alignment_loss(student, teacher, mass, mask, kind="mse")
    assert float(mse) == pytest.approx(_com_mse_reference(student, teacher, mass, mask), rel=1e-5)


def test_weighting_uses_the_weights():
    """Moving all the weight onto one token makes the loss that token's own cosine distance."""
    student, teacher, weights, mask = _case(8, same_width=True)
    weights = torch.zeros_like(weights)
    weights[0, 1] = 3.0
    want = 1.0 - float(torch.cosine_similarity(student[0, 1].double(), teacher[0, 1].double(), dim=0))
    assert float(hra_loss(student, teacher, weights, mask)) == pytest.approx(want, rel=1e-5)
    assert float(com_alignment_loss(student, teacher, weights, mask)) == pytest.approx(want, rel=1e-5)


# --------------------------------------------------------------------------------------------
# RKD
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_rkd_matches_loop_reference(seed):
    student, teacher, _, mask = _case(seed, n=5)
    got = rkd_loss(student, teacher, mask)
    assert float(got) > 0
    assert float(got) == pytest.approx(_rkd_reference(student, teacher, mask), rel=1e-4)
    weighted = rkd_loss(student, teacher, mask, distance_weight=0.3, angle_weight=0.0)
    assert float(weighted) == pytest.approx(_rkd_reference(student, teacher, mask, 0.3, 0.0), rel=1e-4)


def test_rkd_is_zero_under_similarity_transforms_and_accurate_far_from_the_origin():
    student, _, _, mask = _case(9, n=6, ds=5)
    embed = _random_isometry(5, 9, seed=10)
    teacher = 2.5 * student @ embed.T + 40.0 * torch.randn(1, 1, 9)  # embed, scale, translate
    assert float(rkd_loss(student, teacher, mask)) == pytest.approx(0.0, abs=1e-5)
    # a large shared offset (like GPT-2's outlier dimensions) must not spoil float32 accuracy
    offset = student + 1000.0
    assert float(rkd_loss(offset, teacher, mask)) == pytest.approx(0.0, abs=1e-4)


def test_rkd_handles_small_samples():
    student, teacher, _, _ = _case(11, b=3, n=4)
    # sample 0: no span, sample 1: two spans (pairs, no triplet), sample 2: three spans
    mask = torch.tensor(
        [[False] * 4, [True, False, True, False], [True, True, True, False]], dtype=torch.bool
    )
    student.requires_grad_(True)
    got = rkd_loss(student, teacher, mask)
    assert float(got.detach()) == pytest.approx(_rkd_reference(student.detach(), teacher, mask), rel=1e-4)
    got.backward()
    assert torch.isfinite(student.grad).all() and torch.all(student.grad[~mask] == 0)
    none = rkd_loss(student, teacher, torch.zeros_like(mask))
    assert float(none.detach()) == 0.0 and none.requires_grad


# --------------------------------------------------------------------------------------------
# shared contract: gradients, dtypes, bad input
# --------------------------------------------------------------------------------------------
def _all_losses(student, teacher_wide, teacher_same, weights, mask):
    return {
        "dsa": lambda: dsa_loss(student, teacher_wide, weights, mask),
        "hra": lambda: hra_loss(student, teacher_same, weights, mask),
        "com": lambda: com_alignment_loss(student, teacher_same, weights, mask),
        "com_mse": lambda: com_alignment_loss(student, teacher_same, weights, mask, kind="mse"),
        "rkd": lambda: rkd_loss(student, teacher_wide, mask),
    }


@pytest.mark.parametrize("name", ["dsa", "hra", "com", "com_mse", "rkd"])
def test_gradients_reach_the_student_and_never_the_teacher(name):
    student, teacher_wide, weights, mask = _case(12)
    teacher_same = torch.randn_like(student)
    for t in (student, teacher_wide, teacher_same, weights):
        t.requires_grad_(True)
    _all_losses(student, teacher_wide, teacher_same, weights, mask)[name]().backward()
    assert student.grad is not None and student.grad[mask].abs().sum() > 0
    assert teacher_wide.grad is None and teacher_same.grad is None and weights.grad is None


@pytest.mark.parametrize("name", ["dsa", "hra", "com", "com_mse", "rkd"])
def test_bf16_inputs_are_upcast(name):
    student, teacher_wide, weights, mask = _case(13)
    teacher_same = torch.randn_like(student)
    full = _all_losses(student, teacher_wide, teacher_same, weights, mask)[name]()
    half = _all_losses(student.bfloat16(), teacher_wide.bfloat16(), teacher_same.bfloat16(), weights, mask)[
        name
    ]()
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), rel=3e-2, abs=1e-3)


def test_bad_input_is_named():
    student, teacher, weights, mask = _case(14)
    with pytest.raises(ValueError, match=r"kind='l1'.*'cosine', 'mse'"):
        com_alignment_loss(student, student, weights, mask, kind="l1")
    with pytest.raises(ValueError, match="width 5 != teacher width 8"):
        hra_loss(student, teacher, weights, mask)
    with pytest.raises(ValueError, match="must be bool"):
        dsa_loss(student, teacher, weights, mask.long())
    with pytest.raises(ValueError, match="must share"):
        dsa_loss(student, teacher[:, :-1], weights, mask)
    with pytest.raises(ValueError, match=r"mass \(3, 5\)"):
        dsa_loss(student, teacher, weights[:, :-1], mask)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        rkd_loss(student[0], teacher[0], mask[0])


def test_realistic_batch_gives_finite_values_and_gradients():
    """32 samples x 64 span slots with 20% padding: finite loss and gradients, none on padded slots."""
    g = torch.Generator().manual_seed(15)
    student = torch.randn(32, 64, 48, generator=g, requires_grad=True)
    teacher = torch.randn(32, 64, 96, generator=g)
    mass = torch.rand(32, 64, generator=g)
    mask = torch.rand(32, 64, generator=g) < 0.8
    loss = dsa_loss(student, teacher, mass, mask) + rkd_loss(student, teacher, mask)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(student.grad).all()
    assert torch.all(student.grad[~mask] == 0) and student.grad[mask].abs().sum() > 0


def test_cosine_to_a_detached_teacher_equals_torch_cosine_similarity():
    """The fast HRA/CoM cosine: F.cosine_similarity's value everywhere (zero rows included), its
    gradient on every row whose norm is above eps; nothing flows into the teacher."""
    import torch.nn.functional as F

    from distillkit.losses.span import _cosine_to_teacher

    gen = torch.Generator().manual_seed(7)
    student = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    teacher = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64) * 4
    student[0, 1] = 0.0
    teacher[1, 2] = 0.0
    teacher.requires_grad_(True)
    ours_in = student.clone().requires_grad_(True)
    torch_in = student.clone().requires_grad_(True)
    ours = _cosine_to_teacher(ours_in, teacher, 1e-8)  # a teacher that asks for gradients gets none
    want = F.cosine_similarity(torch_in, teacher.detach(), dim=-1, eps=1e-8)
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    (ours * upstream).sum().backward()
    (want * upstream).sum().backward()
    nonzero = student.norm(dim=-1) > 1e-8
    torch.testing.assert_close(ours_in.grad[nonzero], torch_in.grad[nonzero], rtol=1e-10, atol=1e-12)
    assert teacher.grad is None
