"""Cross-tokenizer losses against float64 references written here from ctkd.md §3's formulas.

Every reference loops over samples / positions / pairs in float64 on the raw inputs; the functions
under test are vectorized float32. Inputs are random, with prompts, responses of different lengths
on the two sides, and right padding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillkit.losses import xtok as X

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, LS, LT, VS, VT = 3, 10, 12, 13, 17


def labels_for(lengths, prompt, length, vocab, gen):
    """Shifted labels: -100 on the first ``prompt[b] - 1`` positions and after the response."""
    out = torch.full((len(lengths), length), -100, dtype=torch.long)
    for b, (n, p) in enumerate(zip(lengths, prompt)):
        out[b, p - 1 : p - 1 + n] = torch.randint(0, vocab, (n,), generator=gen)
    return out


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    s_labels = labels_for([5, 3, 6], [2, 4, 3], LS, VS, gen)
    t_labels = labels_for([7, 2, 6], [3, 2, 5], LT, VT, gen)
    return {
        "s_logits": (3 * torch.randn(B, LS, VS, generator=gen)).requires_grad_(True),
        "t_logits": 3 * torch.randn(B, LT, VT, generator=gen),
        "s_labels": s_labels,
        "t_labels": t_labels,
        "gen": gen,
    }


def first_label(labels_row) -> int:
    return int(torch.nonzero(labels_row.ne(-100))[0])


def n_resp(labels_row) -> int:
    return int(labels_row.ne(-100).sum())


def softmax64(x, t=1.0):
    x = x.double() / t
    return torch.softmax(x, -1)


def log_softmax64(x, t=1.0):
    return torch.log_softmax(x.double() / t, -1)


# ============================================================================ ULD
def uld_reference(s_logits, t_logits, s_labels, t_labels, ts=1.0, tt=1.0):
    values = []
    for b in range(s_logits.shape[0]):
        s0, t0 = first_label(s_labels[b]), first_label(t_labels[b])
        for k in range(min(n_resp(s_labels[b]), n_resp(t_labels[b]))):
            q = sorted(softmax64(s_logits[b, s0 + k], ts).tolist(), reverse=True)
            p = sorted(softmax64(t_logits[b, t0 + k], tt).tolist(), reverse=True)
            v = max(len(q), len(p))
            q, p = q + [0.0] * (v - len(q)), p + [0.0] * (v - len(p))
            values.append(sum(abs(a - c) for a, c in zip(q, p)))
    return values


def test_uld_matches_the_reference(batch):
    args = (batch["s_logits"], batch["t_logits"], batch["s_labels"], batch["t_labels"])
    ref = uld_reference(*args)
    assert len(ref) == 5 + 2 + 6
    assert X.uld_loss(*args, reduction="sum").item() == pytest.approx(sum(ref), rel=1e-5)
    assert X.uld_loss(*args, reduction="mean").item() == pytest.approx(sum(ref) / len(ref), rel=1e-5)
    grid = X.uld_loss(*args, reduction="none")
    assert grid.shape == (B, 6)
    assert grid[1, 2:].abs().sum() == 0 and grid[1, :2].abs().sum() > 0
    assert sorted(grid[grid.ne(0)].tolist()) == pytest.approx(sorted(ref), rel=1e-5)
    ref_t = uld_reference(*args, ts=2.0, tt=0.5)
    got = X.uld_loss(*args, student_temperature=2.0, teacher_temperature=0.5, reduction="sum")
    assert got.item() == pytest.approx(sum(ref_t), rel=1e-5)


def test_uld_writes_nothing_in_place_and_only_the_student_gets_gradients(batch):
    s, t = batch["s_logits"], batch["t_logits"].clone().requires_grad_(True)
    s_labels, t_labels = batch["s_labels"], batch["t_labels"]
    copies = [x.detach().clone() for x in (s, t, s_labels, t_labels)]
    versions = [x._version for x in (s, t, s_labels, t_labels)]
    X.uld_loss(s, t, s_labels, t_labels, reduction="sum").backward()
    for x, c, v in zip((s, t, s_labels, t_labels), copies, versions):
        assert torch.equal(x.detach(), c) and x._version == v
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


def test_uld_is_invariant_to_permuting_each_vocabulary(batch):
    args = (batch["s_logits"], batch["t_logits"], batch["s_labels"], batch["t_labels"])
    base = X.uld_loss(*args, reduction="sum")
    ps, pt = torch.randperm(VS, generator=batch["gen"]), torch.randperm(VT, generator=batch["gen"])
    permuted = X.uld_loss(args[0][..., ps], args[1][..., pt], args[2], args[3], reduction="sum")
    assert permuted.item() == pytest.approx(base.item(), rel=1e-6)


def test_uld_is_zero_for_equal_distributions_at_the_response_start(batch):
    """The teacher's k-th response row is the student's k-th (vocabulary permuted), whatever the prompts."""
    s, s_labels = batch["s_logits"], batch["s_labels"]
    perm = torch.randperm(VS, generator=batch["gen"])
    t = torch.randn(B, LT, VS, generator=batch["gen"])
    t_labels = torch.full((B, LT), -100, dtype=torch.long)
    for b in range(B):
        s0, n = first_label(s_labels[b]), n_resp(s_labels[b])
        t0 = b + 1  # another prompt length
        t[b, t0 : t0 + n] = s.detach()[b, s0 : s0 + n][:, perm]
        t_labels[b, t0 : t0 + n] = 1
    assert X.uld_loss(s, t, s_labels, t_labels, reduction="sum").item() == pytest.approx(0.0, abs=1e-5)
    shifted = t_labels.roll(1, dims=1)  # one position off (the ports' bug) is not zero
    assert X.uld_loss(s, t, s_labels, shifted, reduction="sum").item() > 0.1


def test_uld_chunks_agree(batch):
    args = (batch["s_logits"], batch["t_logits"], batch["s_labels"], batch["t_labels"])
    whole = X.uld_loss(*args, reduction="sum")
    (g_whole,) = torch.autograd.grad(whole, args[0])
    chunked = X.uld_loss(*args, reduction="sum", chunk_size=4)
    (g_chunk,) = torch.autograd.grad(chunked, args[0])
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_chunk, g_whole, atol=1e-7)


def test_uld_bad_inputs(batch):
    with pytest.raises(ValueError, match="student_labels"):
        X.uld_loss(batch["s_logits"], batch["t_logits"], batch["t_labels"], batch["t_labels"])
    with pytest.raises(ValueError, match="reduction='avg'"):
        X.uld_loss(
            batch["s_logits"], batch["t_logits"], batch["s_labels"], batch["t_labels"], reduction="avg"
        )


# ============================================================================ MinED
def pairs_tensor(pairs_per_sample):
    p = max(len(x) for x in pairs_per_sample)
    sp = torch.zeros(len(pairs_per_sample), p, dtype=torch.long)
    tp = torch.zeros_like(sp)
    mask = torch.zeros(len(pairs_per_sample), p, dtype=torch.bool)
    for b, pairs in enumerate(pairs_per_sample):
        for i, (s, t) in enumerate(pairs):
            sp[b, i], tp[b, i], mask[b, i] = s, t, True
    return sp, tp, mask


@pytest.fixture
def mined_setup(batch):
    gen = batch["gen"]
    stu2tea = torch.randint(0, VT, (VS,), generator=gen)
    stu2tea[[2, 5, 11]] = -1
    s_labels, t_labels = batch["s_labels"], batch["t_labels"]
    pairs = []
    for b in range(B):
        sp = torch.nonzero(s_labels[b].ne(-100)).squeeze(1).tolist()
        tp = torch.nonzero(t_labels[b].ne(-100)).squeeze(1).tolist()
        pairs.append([(s, t) for s, t in zip(sp[::2], tp[::2])])
    pairs[0].append((0, 0))  # a pair outside the student's response rows: ignored
    return stu2tea, pairs


def mined_reference(s_logits, t_logits, s_labels, pairs, stu2tea, temperature):
    partner = {(b, s): t for b, ps in enumerate(pairs) for s, t in ps}
    rows, losses = [], []
    for b in range(s_logits.shape[0]):
        for s in range(s_logits.shape[1]):
            y = int(s_labels[b, s])
            if y == -100:
                continue
            target = None
            if (b, s) in partner:
                t = partner[(b, s)]
                target = [float(t_logits[b, t, j]) if j >= 0 else -1e5 for j in stu2tea.tolist()]
                if max(target) == -1e5:
                    target = None
            if target is None:
                target = [100.0 if v == y else -1e5 for v in range(s_logits.shape[-1])]
            target = torch.tensor(target, dtype=torch.float64)
            p, logp = softmax64(target, temperature), log_softmax64(target, temperature)
            logq = log_softmax64(s_logits[b, s].detach(), temperature)
            rows.append(target)
            losses.append(float((p * (logp - logq)).sum()))
    return torch.stack(rows), losses


def test_mined_targets_and_loss_match_the_reference(batch, mined_setup):
    stu2tea, pairs = mined_setup
    sp, tp, mask = pairs_tensor(pairs)
    targets, aligned = X.mined_targets(batch["t_logits"], batch["s_labels"], sp, tp, mask, stu2tea)
    ref_targets, ref_losses = mined_reference(
        batch["s_logits"], batch["t_logits"], batch["s_labels"], pairs, stu2tea, 2.0
    )
    assert targets.dtype == torch.float32 and not targets.requires_grad
    assert torch.allclose(targets.double(), ref_targets, atol=1e-5)
    assert int(aligned.sum()) == sum(len(p) for p in pairs) - 1  # the out-of-response pair is ignored
    args = (batch["s_logits"], batch["t_logits"], batch["s_labels"], sp, tp, mask, stu2tea)
    assert X.mined_loss(*args, reduction="sum").item() == pytest.approx(sum(ref_losses), rel=1e-5)
    mean = X.mined_loss(*args, reduction="mean")
    assert mean.item() == pytest.approx(sum(ref_losses) / len(ref_losses), rel=1e-5)
    _, ref1 = mined_reference(batch["s_logits"], batch["t_logits"], batch["s_labels"], pairs, stu2tea, 1.0)
    assert X.mined_loss(*args, temperature=1.0, reduction="sum").item() == pytest.approx(sum(ref1), rel=1e-5)


def test_mined_unmapped_rows_fall_back_to_one_hot_and_the_teacher_gets_no_gradient(batch, mined_setup):
    _, pairs = mined_setup
    sp, tp, mask = pairs_tensor(pairs)
    nothing = torch.full((VS,), -1, dtype=torch.long)
    teacher = batch["t_logits"].clone().requires_grad_(True)
    targets, aligned = X.mined_targets(teacher, batch["s_labels"], sp, tp, mask, nothing)
    assert not aligned.any()
    labels = batch["s_labels"][batch["s_labels"].ne(-100)]
    assert torch.equal(targets.argmax(-1), labels) and bool(torch.all(targets.max(-1).values == 100))
    loss = X.mined_loss(batch["s_logits"], teacher, batch["s_labels"], sp, tp, mask, nothing, reduction="sum")
    # one-hot targets: FKL is the student's CE at T
    logq = torch.log_softmax(batch["s_logits"].detach()[batch["s_labels"].ne(-100)].double() / 2.0, -1)
    assert loss.item() == pytest.approx(-logq.gather(1, labels[:, None]).sum().item(), rel=1e-5)
    loss.backward()
    assert teacher.grad is None


def test_mined_rejects_maps_of_the_wrong_size(batch, mined_setup):
    stu2tea, pairs = mined_setup
    sp, tp, mask = pairs_tensor(pairs)
    with pytest.raises(ValueError, match="stu2tea points at teacher id 99"):
        X.mined_targets(batch["t_logits"], batch["s_labels"], sp, tp, mask, torch.full((VS,), 99))
    with pytest.raises(ValueError, match="covers 5 student ids"):
        X.mined_loss(batch["s_logits"], batch["t_logits"], batch["s_labels"], sp, tp, mask, stu2tea[:5])


# ============================================================================ DSKD (one vocabulary)
DS, DT = 5, 7


def linear64(layer: nn.Module, x):
    out = x.double() @ layer.weight.detach().double().T
    return out + layer.bias.detach().double() if layer.bias is not None else out


def kl64(logp, logq):
    return float((logp.exp() * (logp - logq)).sum())


@pytest.fixture
def dskd_setup(batch):
    torch.manual_seed(1)
    gen = batch["gen"]
    return {
        "h_s": torch.randn(B, LS, DS, generator=gen).requires_grad_(True),
        "h_t": torch.randn(B, LS, DT, generator=gen),
        "t_logits": 3 * torch.randn(B, LS, VS, generator=gen),
        "w_s": torch.randn(VS, DS, generator=gen).requires_grad_(True),
        "head_t": nn.Linear(DT, VS, bias=False).requires_grad_(False),
        "t2s": nn.Linear(DT, DS),
        "s2t": nn.Linear(DS, DT),
    }


@pytest.mark.parametrize("divergence", ["fkl", "rkl"])
def test_dskd_terms_match_the_reference(batch, dskd_setup, divergence):
    d, labels = dskd_setup, batch["s_labels"]
    s_logits = batch["s_logits"]
    terms = X.dskd_terms(
        d["h_s"], d["h_t"], s_logits, d["t_logits"], labels, d["w_s"], d["head_t"], d["t2s"], d["s2t"],
        divergence=divergence, temperature=2.0, reduction="sum",
    )  # fmt: skip
    ce = kd = s2t = 0.0
    n = 0
    for b in range(B):
        for i in range(LS):
            y = int(labels[b, i])
            if y == -100:
                continue
            n += 1
            t2s_logits = linear64(d["t2s"], d["h_t"][b, i]) @ d["w_s"].detach().double().T
            ce += -float(torch.log_softmax(t2s_logits, -1)[y])
            logp, logq = log_softmax64(t2s_logits, 2.0), log_softmax64(s_logits[b, i].detach(), 2.0)
            kd += kl64(logp, logq) if divergence == "fkl" else kl64(logq, logp)
            s2t_logits = linear64(d["s2t"], d["h_s"][b, i].detach()) @ d["head_t"].weight.double().T
            s2t += kl64(log_softmax64(d["t_logits"][b, i], 2.0), log_softmax64(s2t_logits, 2.0))
    assert terms["t2s_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["t2s_kd"].item() == pytest.approx(kd, rel=1e-5)
    assert terms["s2t_kd"].item() == pytest.approx(s2t, rel=1e-5)
    means = X.dskd_terms(
        d["h_s"], d["h_t"], s_logits, d["t_logits"], labels, d["w_s"], d["head_t"], d["t2s"], d["s2t"],
        divergence=divergence, temperature=2.0,
    )  # fmt: skip
    assert means["t2s_ce"].item() == pytest.approx(ce / n, rel=1e-5)


def test_dskd_gradients_reach_only_their_own_parameters(batch, dskd_setup):
    d = dskd_setup
    teacher_h = d["h_t"].clone().requires_grad_(True)
    teacher_logits = d["t_logits"].clone().requires_grad_(True)
    terms = X.dskd_terms(
        d["h_s"], teacher_h, batch["s_logits"], teacher_logits, batch["s_labels"], d["w_s"], d["head_t"],
        d["t2s"], d["s2t"], reduction="sum",
    )  # fmt: skip
    params = {
        "s_logits": batch["s_logits"], "h_s": d["h_s"], "w_s": d["w_s"], "t2s": d["t2s"].weight,
        "s2t": d["s2t"].weight, "teacher_h": teacher_h, "teacher_logits": teacher_logits,
    }  # fmt: skip
    reached = {}
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
        reached[name] = {k for k, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
    assert reached["t2s_ce"] == {"t2s"}  # the student head is detached, the teacher frozen
    assert reached["t2s_kd"] == {"s_logits"}
    assert reached["s2t_kd"] == {"h_s", "s2t"}
    assert d["head_t"].weight.grad is None


def test_dskd_refuses_two_tokenizations(batch, dskd_setup):
    d = dskd_setup
    with pytest.raises(ValueError, match="one tokenization"):
        X.dskd_terms(
            d["h_s"], d["h_t"], batch["s_logits"], d["t_logits"], batch["s_labels"], d["w_s"], d["head_t"],
            d["t2s"], d["s2t"], teacher_labels=batch["s_labels"].roll(1, 1),
        )  # fmt: skip


# ============================================================================ DSKD-CMA
@pytest.fixture
def cma_setup(batch):
    torch.manual_seed(2)
    gen = batch["gen"]
    s_ids = torch.randint(0, VS, (B, LS), generator=gen)
    t_ids = torch.randint(0, VT, (B, LT), generator=gen)
    return {
        "h_s": torch.randn(B, LS, DS, generator=gen).requires_grad_(True),
        "h_t": 2 * torch.randn(B, LT, DT, generator=gen),
        "s_ids": s_ids,
        "t_ids": t_ids,
        "e_s": nn.Embedding(VS, DS),
        "e_t": nn.Embedding(VT, DT),
        "w_s": torch.randn(VS, DS, generator=gen),
        "w_t": torch.randn(VT, DT, generator=gen),
        "query": nn.Linear(2 * DS, 2 * DT),
        "t2s": nn.Linear(DT, DS),
        "s2t": nn.Linear(DS, DT),
    }


def cma_reference(batch, c, temperature, teacher_temperature, std_scope):
    s_labels, t_labels = batch["s_labels"], batch["t_labels"]
    s_mask, t_mask = s_labels.ne(-100), t_labels.ne(-100)

    def embed(table, ids):
        return table.weight.detach().double()[ids]

    zs, zt = torch.zeros_like(s_labels), torch.zeros_like(t_labels)
    s_in, s_tgt = (
        embed(c["e_s"], torch.where(s_mask, c["s_ids"], zs)),
        embed(c["e_s"], torch.where(s_mask, s_labels, zs)),
    )
    t_in, t_tgt = (
        embed(c["e_t"], torch.where(t_mask, c["t_ids"], zt)),
        embed(c["e_t"], torch.where(t_mask, t_labels, zt)),
    )
    t_index = torch.cat([t_in, t_tgt], -1)
    h_t = c["h_t"].double()

    def std(x):  # one scalar, unbiased, over the whole tensor or over the teacher response rows
        x = x if std_scope == "all" else x[t_mask]
        flat = x.reshape(-1)
        mean = flat.mean()
        return math.sqrt(float(((flat - mean) ** 2).sum()) / (flat.numel() - 1))

    k = t_index / std(t_index)
    v_t2s = linear64(c["t2s"], h_t / std(h_t) + t_tgt / std(t_tgt))
    ce = kd = s2t = 0.0
    for b in range(B):
        q = linear64(c["query"], torch.cat([s_in[b], s_tgt[b]], -1))
        a = q @ k[b].T / math.sqrt(2 * DT)
        allowed = s_mask[b][:, None] & t_mask[b][None, :]
        a = a + (~allowed).double() * -1e5
        t2s_logits = torch.softmax(a, -1) @ v_t2s[b] @ c["w_s"].double().T
        v_s2t = linear64(c["s2t"], c["h_s"][b].detach())
        s2t_logits = torch.softmax(a.T, -1) @ v_s2t @ c["w_t"].double().T
        for i in range(LS):
            y = int(s_labels[b, i])
            if y == -100:
                continue
            ce += -float(torch.log_softmax(t2s_logits[i], -1)[y])
            if int(t2s_logits[i].argmax()) == y:
                logp = log_softmax64(t2s_logits[i] / teacher_temperature, temperature)
                kd += kl64(logp, log_softmax64(batch["s_logits"][b, i].detach(), temperature))
        for j in range(LT):
            if t_labels[b, j] == -100:
                continue
            s2t += kl64(
                log_softmax64(batch["t_logits"][b, j], temperature), log_softmax64(s2t_logits[j], temperature)
            )
    return ce, kd, s2t


@pytest.mark.parametrize(("std_scope", "teacher_temperature"), [("all", 1.0), ("response", 2.0)])
def test_dskd_cma_terms_match_the_reference(batch, cma_setup, std_scope, teacher_temperature):
    c = cma_setup
    terms = X.dskd_cma_terms(
        c["h_s"], c["h_t"], batch["s_logits"], batch["t_logits"], c["s_ids"], batch["s_labels"], c["t_ids"],
        batch["t_labels"], c["e_s"], c["e_t"], c["w_s"], c["w_t"], c["query"], c["t2s"], c["s2t"],
        temperature=2.0, teacher_temperature=teacher_temperature, reduction="sum", std_scope=std_scope,
    )  # fmt: skip
    ce, kd, s2t = cma_reference(batch, c, 2.0, teacher_temperature, std_scope)
    assert kd > 0  # some t2s rows agree with the label, so the masked KD term is exercised
    assert terms["t2s_ce"].item() == pytest.approx(ce, rel=1e-4)
    assert terms["t2s_kd"].item() == pytest.approx(kd, rel=1e-4, abs=1e-6)
    assert terms["s2t_kd"].item() == pytest.approx(s2t, rel=1e-4)


def test_dskd_cma_gradients(batch, cma_setup):
    c = cma_setup
    h_t = c["h_t"].clone().requires_grad_(True)
    terms = X.dskd_cma_terms(
        c["h_s"], h_t, batch["s_logits"], batch["t_logits"], c["s_ids"], batch["s_labels"], c["t_ids"],
        batch["t_labels"], c["e_s"], c["e_t"], c["w_s"], c["w_t"], c["query"], c["t2s"], c["s2t"],
        reduction="sum",
    )  # fmt: skip
    sum(terms.values()).backward()
    assert h_t.grad is None and c["e_s"].weight.grad is None and c["e_t"].weight.grad is None
    for module in (c["query"], c["t2s"], c["s2t"]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert c["h_s"].grad.abs().sum() > 0


# ============================================================================ DSKDv2-ETA
def constructed_heads(gen, direction, vs=40, vt=50, ds=6, dt=8, overlap=30):
    """Heads of one linear relation on the overlap: ``"t2s"``: W_T[t_ids] = W_S[s_ids] A (the teacher's
    overlap head lies in the student's span); ``"s2t"``: W_S[s_ids] = W_T[t_ids] C (the reverse)."""
    s_ids = torch.randperm(vs, generator=gen)[:overlap]
    t_ids = torch.randperm(vt, generator=gen)[:overlap]
    w_s = torch.randn(vs, ds, generator=gen)
    w_t = torch.randn(vt, dt, generator=gen)
    if direction == "t2s":
        w_t[t_ids] = w_s[s_ids] @ torch.randn(ds, dt, generator=gen)
    else:
        w_s[s_ids] = w_t[t_ids] @ torch.randn(dt, ds, generator=gen)
    return w_s, w_t, s_ids, t_ids


def test_eta_pinv_init_gives_logit_equivalence_on_the_overlap():
    gen = torch.Generator().manual_seed(3)
    h_t, h_s = torch.randn(20, 8, generator=gen), torch.randn(20, 6, generator=gen)
    # t2s: Proj_t2s(h^T) through the student head = the teacher's logits on the overlap
    w_s, w_t, s_ids, t_ids = constructed_heads(gen, "t2s")
    w_t2s, pinv_t = X.eta_pinv_init(w_s, w_t, s_ids, t_ids)
    assert w_t2s.dtype == pinv_t.dtype == torch.float32
    assert w_t2s.shape == (6, 8) and pinv_t.shape == (30, 8)
    ws_o, wt_o = w_s[s_ids].T.double(), w_t[t_ids].T.double()
    assert torch.allclose(
        w_t2s.double(), (wt_o @ torch.linalg.pinv(ws_o)).T, atol=1e-4
    )  # (W^o_T pinv(W^o_S))^T
    assert torch.allclose((h_t @ w_t2s.T) @ w_s[s_ids].T, h_t @ w_t[t_ids].T, atol=1e-3)
    assert not torch.allclose(h_t @ w_t2s.T @ w_s.T, h_t @ w_t[:40].T, atol=1e-1)  # off the overlap: no
    # s2t: h^S W_s2t through the teacher head = the student's logits on the overlap
    w_s, w_t, s_ids, t_ids = constructed_heads(gen, "s2t")
    _, pinv_t = X.eta_pinv_init(w_s, w_t, s_ids, t_ids)
    assert torch.allclose(pinv_t.double(), torch.linalg.pinv(w_t[t_ids].T.double()), atol=1e-4)
    w_s2t = X.eta_s2t_matrix(w_s, s_ids, pinv_t)
    assert w_s2t.shape == (6, 8) and w_s2t.dtype == torch.float32
    assert torch.allclose((h_s @ w_s2t) @ w_t[t_ids].T, h_s @ w_s[s_ids].T, atol=1e-3)
    # bf16 heads: computed in float32 all the same
    w_t2s16, pinv16 = X.eta_pinv_init(w_s.bfloat16(), w_t.bfloat16(), s_ids, t_ids)
    assert w_t2s16.dtype == pinv16.dtype == torch.float32
    # topk: the first k overlap pairs only
    k_t2s, k_pinv = X.eta_pinv_init(w_s, w_t, s_ids, t_ids, topk=12)
    ref_t2s, ref_pinv = X.eta_pinv_init(w_s, w_t, s_ids[:12], t_ids[:12])
    assert torch.equal(k_t2s, ref_t2s) and torch.equal(k_pinv, ref_pinv) and k_pinv.shape == (12, 8)
    assert torch.equal(X.eta_s2t_matrix(w_s, s_ids, k_pinv), w_s[s_ids[:12]].T @ k_pinv)
    with pytest.raises(ValueError, match="topk=0"):
        X.eta_pinv_init(w_s, w_t, s_ids, t_ids, topk=0)


@pytest.fixture
def eta_setup(batch):
    gen = batch["gen"]
    s_eos, t_eos = VS - 1, VT - 1
    lut = torch.randint(0, VS - 1, (VT,), generator=gen)
    lut[[3, 4, 9, t_eos]] = -1  # unmapped teacher ids (the teacher's EOS too: EOS -> EOS is a rule)
    t_logits = 3 * torch.randn(B, LT, VT, generator=gen)
    pairs = []
    for b in range(B):
        sp = torch.nonzero(batch["s_labels"][b].ne(-100)).squeeze(1).tolist()
        tp = torch.nonzero(batch["t_labels"][b].ne(-100)).squeeze(1).tolist()
        pairs.append(list(zip(sp, tp))[: min(len(sp), len(tp))])
    # force some teacher predictions: an unmapped id, and EOS
    t0, t1 = pairs[0][0][1], pairs[0][1][1]
    t_logits[0, t0, 3] = 50.0
    t_logits[0, t1, t_eos] = 50.0
    return {
        "h_s": torch.randn(B, LS, DS, generator=gen).requires_grad_(True),
        "h_t": torch.randn(B, LT, DT, generator=gen),
        "t_logits": t_logits,
        "w_s": torch.randn(VS, DS, generator=gen),
        "w_t": torch.randn(VT, DT, generator=gen),
        "t2s": nn.Linear(DT, DS, bias=False),
        "s2t": torch.randn(DS, DT, generator=gen),
        "lut": lut,
        "eos": (s_eos, t_eos),
        "pairs": pairs,
    }


def eta_reference(batch, e, divergence="fkl", temperature=2.0):
    s_eos, t_eos = e["eos"]
    ce = kd = s2t = 0.0
    kept = agree = unmapped = 0
    for b, pairs in enumerate(e["pairs"]):
        for s, t in pairs:
            pred = int(e["t_logits"][b, t].argmax())
            label = s_eos if pred == t_eos else int(e["lut"][pred])
            if label < 0:
                unmapped += 1
                continue
            kept += 1
            t2s_logits = (e["h_t"][b, t].double() @ e["t2s"].weight.detach().double().T) @ e["w_s"].double().T
            ce += -float(torch.log_softmax(t2s_logits, -1)[label])
            logp, logq = (
                log_softmax64(t2s_logits, temperature),
                log_softmax64(batch["s_logits"][b, s].detach(), temperature),
            )
            if int(t2s_logits.argmax()) == label:
                agree += 1
                kd += kl64(logp, logq) if divergence == "fkl" else kl64(logq, logp)
            s2t_logits = (e["h_s"][b, s].detach().double() @ e["s2t"].double()) @ e["w_t"].double().T
            logp, logq = (
                log_softmax64(e["t_logits"][b, t], temperature),
                log_softmax64(s2t_logits, temperature),
            )
            s2t += kl64(logp, logq) if divergence == "fkl" else kl64(logq, logp)
    return ce, kd, s2t, kept, agree, unmapped


@pytest.mark.parametrize("divergence", ["fkl", "rkl"])
def test_eta_terms_match_the_reference(batch, eta_setup, divergence):
    e = eta_setup
    sp, tp, mask = pairs_tensor(e["pairs"])
    args = (
        e["h_s"], e["h_t"], batch["s_logits"], e["t_logits"], sp, tp, mask, e["w_s"], e["w_t"], e["t2s"],
        e["s2t"], e["lut"], *e["eos"],
    )  # fmt: skip
    sums = X.eta_terms(*args, divergence=divergence, reduction="sum")
    means = X.eta_terms(*args, divergence=divergence)
    ce, kd, s2t, kept, agree, unmapped = eta_reference(batch, e, divergence)
    assert unmapped >= 1 and kept > agree >= 1  # every branch is exercised
    assert sums["t2s_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert sums["t2s_kd"].item() == pytest.approx(kd, rel=1e-5, abs=1e-7)
    assert sums["s2t_kd"].item() == pytest.approx(s2t, rel=1e-5)
    assert means["t2s_ce"].item() == pytest.approx(ce / kept, rel=1e-5)
    assert means["t2s_kd"].item() == pytest.approx(kd / max(agree, 1), rel=1e-5, abs=1e-7)
    assert means["s2t_kd"].item() == pytest.approx(s2t / kept, rel=1e-5)
    assert means["pairs"].item() == kept and means["unmapped"].item() == unmapped
    assert means["agreement"].item() == pytest.approx(agree / kept)


def test_eta_an_unmapped_prediction_never_becomes_a_label(batch, eta_setup):
    """The pair whose teacher predicts id 3 (unmapped) is dropped; the EOS prediction maps to EOS."""
    e = eta_setup
    sp, tp, mask = pairs_tensor(e["pairs"])
    args = (
        e["h_s"], e["h_t"], batch["s_logits"], e["t_logits"], sp, tp, mask, e["w_s"], e["w_t"], e["t2s"],
        e["s2t"], e["lut"], *e["eos"],
    )  # fmt: skip
    full = X.eta_terms(*args, reduction="sum")
    # dropping the unmapped pair from the inputs changes nothing: it never counted
    only_mapped = mask.clone()
    only_mapped[0, 0] = False
    dropped = X.eta_terms(*args[:6], only_mapped, *args[7:], reduction="sum")
    for name in ("t2s_ce", "t2s_kd", "s2t_kd", "pairs"):
        assert dropped[name].item() == pytest.approx(full[name].item(), rel=1e-6)
    # dropping the EOS pair does change the terms: it counted, with the student's EOS as its label
    no_eos = mask.clone()
    no_eos[0, 1] = False
    assert (
        X.eta_terms(*args[:6], no_eos, *args[7:], reduction="sum")["pairs"].item() == full["pairs"].item() - 1
    )
    # the reference's bug mapped unmapped ids to unk (GPT-2's EOS): never here
    buggy = e["lut"].clone()
    buggy[buggy.lt(0)] = e["eos"][0]
    assert X.eta_terms(*args[:11], buggy, *e["eos"], reduction="sum")["pairs"].item() > full["pairs"].item()


def test_eta_gradients_and_threshold(batch, eta_setup):
    e = eta_setup
    sp, tp, mask = pairs_tensor(e["pairs"])
    h_t = e["h_t"].clone().requires_grad_(True)
    t_logits = e["t_logits"].clone().requires_grad_(True)
    args = (
        e["h_s"], h_t, batch["s_logits"], t_logits, sp, tp, mask, e["w_s"], e["w_t"], e["t2s"], e["s2t"],
        e["lut"], *e["eos"],
    )  # fmt: skip
    terms = X.eta_terms(*args, reduction="sum")
    (terms["t2s_ce"] + terms["t2s_kd"] + terms["s2t_kd"]).backward()
    assert h_t.grad is None and t_logits.grad is None
    assert e["t2s"].weight.grad.abs().sum() > 0 and e["h_s"].grad.abs().sum() > 0
    # t2s_agreement = 0: the agreement rate is above it, so t2s_kd counts every kept pair
    everything = X.eta_terms(*args, t2s_agreement=0.0, reduction="sum")
    assert everything["t2s_kd"].item() > terms["t2s_kd"].item()
    with pytest.raises(ValueError, match="teacher_to_student has shape"):
        X.eta_terms(*args[:11], e["lut"][:5], *e["eos"])


# ============================================================================ MultiLevelOT
def mlot_side64(logits, labels, width, temperature):
    rows = torch.zeros(logits.shape[0], width, logits.shape[-1], dtype=torch.float64)
    counts = []
    for b in range(logits.shape[0]):
        start, n = first_label(labels[b]), n_resp(labels[b])
        counts.append(n)
        for k in range(n):
            z = logits[b, start + k].detach().double()
            std = math.sqrt(float(((z - z.mean()) ** 2).sum()) / (z.numel() - 1))
            rows[b, k] = torch.softmax(z / (std + 1e-4) / temperature, -1)
    return rows, counts


def mlot_columns64(p, top_k, sorted_rows):
    if sorted_rows:
        p = p.sort(-1, descending=True).values
    mass = p.sum((0, 1)).tolist()
    order = sorted(range(len(mass)), key=lambda v: -mass[v])[:top_k]
    p = p[..., order]
    if p.shape[-1] < top_k:
        p = torch.cat([p, torch.zeros(*p.shape[:-1], top_k - p.shape[-1], dtype=p.dtype)], -1)
    return p


def sinkhorn64(x, y, eps=0.1, iters=10):
    n, m = x.shape[0], y.shape[0]
    cost = torch.tensor(
        [[float((x[i] - y[j]).abs().sum()) for j in range(m)] for i in range(n)], dtype=torch.float64
    )
    plan = torch.exp(-cost / eps)
    for _ in range(iters):
        plan = plan / plan.sum(1, keepdim=True)
        plan = plan / plan.sum(0, keepdim=True)
    return float((plan * cost).sum())


def mlot_reference(
    batch,
    temperature=1.0,
    top_k=50,
    sorted_rows=False,
    kl_form="student_probs",
    l1_rows="shared",
    ot_mean=False,
):
    s_labels, t_labels = batch["s_labels"], batch["t_labels"]
    width = max(int(s_labels.ne(-100).sum(1).max()), int(t_labels.ne(-100).sum(1).max()))
    s, ns = mlot_side64(batch["s_logits"], s_labels, width, temperature)
    t, nt = mlot_side64(batch["t_logits"], t_labels, width, temperature)
    s, t = mlot_columns64(s, top_k, sorted_rows), mlot_columns64(t, top_k, sorted_rows)
    if l1_rows == "shared":
        per = []
        for b in range(B):
            m = min(ns[b], nt[b])
            per.append(sum(float((s[b, r] - t[b, r]).abs().sum()) for r in range(m)) / m)
        token = sum(per) / B
    else:
        token = float((s - t).abs().sum(-1).mean())
    a, c = (s, t) if kl_form == "student_probs" else (t, s)
    kl = -float((torch.softmax(a, -1) * torch.log_softmax(c, -1)).sum(-1).mean())
    ots = [0.001 * sinkhorn64(torch.softmax(t[b] / 2, -1), torch.softmax(s[b] / 2, -1)) for b in range(B)]
    ot = sum(ots) / B if ot_mean else sum(ots)
    return token, kl, ot


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"temperature": 2.0, "column_order": "sorted"},
        {"top_k": 5, "kl_form": "teacher_probs", "l1_rows": "all", "ot_reduction": "mean"},
        {"top_k": 15},  # wider than the student vocabulary (13): zero columns pad it
    ],
)
def test_multilevel_ot_matches_the_reference(batch, options):
    got = X.multilevel_ot_loss(
        batch["s_logits"], batch["t_logits"], batch["s_labels"], batch["t_labels"], **options
    )
    token, kl, ot = mlot_reference(
        batch,
        temperature=options.get("temperature", 1.0),
        top_k=options.get("top_k", 50),
        sorted_rows=options.get("column_order") == "sorted",
        kl_form=options.get("kl_form", "student_probs"),
        l1_rows=options.get("l1_rows", "shared"),
        ot_mean=options.get("ot_reduction") == "mean",
    )
    assert got["token"].item() == pytest.approx(token, rel=1e-5)
    assert got["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert got["ot"].item() == pytest.approx(ot, rel=1e-4)
    assert got["total"].item() == pytest.approx(token + 0.1 * kl + 0.1 * ot, rel=1e-5)


def test_multilevel_ot_gradients_and_identity(batch):
    teacher = batch["t_logits"].clone().requires_grad_(True)
    got = X.multilevel_ot_loss(batch["s_logits"], teacher, batch["s_labels"], batch["t_labels"])
    got["total"].backward()
    assert teacher.grad is None and batch["s_logits"].grad.abs().sum() > 0
    same = X.multilevel_ot_loss(
        batch["s_logits"], batch["s_logits"].detach(), batch["s_labels"], batch["s_labels"]
    )
    assert same["token"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"column_order='rank'.*\['mass', 'sorted'\]"):
        X.multilevel_ot_loss(
            batch["s_logits"], teacher, batch["s_labels"], batch["t_labels"], column_order="rank"
        )


def test_sinkhorn_is_batched_and_float32():
    gen = torch.Generator().manual_seed(4)
    x = torch.softmax(torch.randn(4, 6, 5, generator=gen), -1).bfloat16()
    y = torch.softmax(torch.randn(4, 7, 5, generator=gen), -1).bfloat16()
    got = X.sinkhorn_ot(x, y)
    assert got.shape == (4,) and got.dtype == torch.float32
    for b in range(4):
        assert got[b].item() == pytest.approx(sinkhorn64(x[b].double(), y[b].double()), rel=1e-4)


# ============================================================================ helpers
def test_response_rows_and_positional_pairs(batch):
    pos, mask = X.response_rows(batch["s_labels"])
    for b in range(B):
        expected = torch.nonzero(batch["s_labels"][b].ne(-100)).squeeze(1).tolist()
        assert pos[b][mask[b]].tolist() == expected
    bi, sp, tp = X.paired_response_rows(batch["s_labels"], batch["t_labels"])
    assert bi.tolist() == [0] * 5 + [1] * 2 + [2] * 6
    assert sp[:2].tolist() == [1, 2] and tp[:2].tolist() == [2, 3]  # the first response rows face each other
