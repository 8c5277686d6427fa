"""MTA's defaults reproduce the authors' code (issue 9 items 1, 2, 4, 5, 6), each against a float64 loop
written here from the reference's rule, on a padded batch with a token inside two units."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillkit.methods.mta import MTA
from distillkit.models.layer_map import LayerPair, resolve_layer_map
from distillkit.spans.membership import collate_membership
from distillkit.spans.pooling import self_similarity_weights
from distillkit.types import Batch, ModelOutput, SideBatch, SpanGrid
from tests.helpers import compose_cfg

B, L, D_S, D_T, V = 2, 7, 4, 6, 11
LENGTHS = (7, 5)
#: word units per sample; token 2 of sample 0 is inside two units (the reference counts it twice)
UNITS = [[[1, 2], [2, 3], [4, 5, 6]], [[0, 1], [2, 3, 4]]]


def ref_self_similarity(h: torch.Tensor, mask: torch.Tensor, rows: str) -> torch.Tensor:
    """papers.md §2.2 compute_token_weights, one sample at a time, in float64."""
    out = torch.zeros(h.shape[:2], dtype=torch.float64)
    for b in range(h.shape[0]):
        x = h[b].double()
        x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        n = int(mask[b].sum())
        col = torch.zeros(h.shape[1], dtype=torch.float64)
        queries = range(h.shape[1]) if rows == "all" else range(n)
        for i in queries:
            s = [
                (x[i] @ x[j]) / math.sqrt(h.shape[-1]) if (j < n and j != i) else -math.inf
                for j in range(h.shape[1])
            ]
            a = torch.softmax(torch.tensor(s, dtype=torch.float64), 0)
            col += a / a.sum()
        out[b] = col / (h.shape[1] if rows == "all" else n)
    return out


def test_self_similarity_weights_average_over_every_query_row_like_the_reference():
    torch.manual_seed(0)
    h = torch.randn(B, L, D_T)
    mask = torch.tensor([[1] * n + [0] * (L - n) for n in LENGTHS])
    for rows in ("all", "valid"):
        got = self_similarity_weights(h.double(), mask, query_rows=rows)
        torch.testing.assert_close(got.double(), ref_self_similarity(h, mask, rows), rtol=1e-6, atol=1e-9)
    # the padded sample's weights differ between the two rules (the unpadded one's do not)
    a, v = self_similarity_weights(h, mask, "all"), self_similarity_weights(h, mask, "valid")
    torch.testing.assert_close(a[0], v[0])
    assert (a[1] - v[1]).abs().max() > 1e-3


def fixture(weights: str, **knobs):
    torch.manual_seed(1)
    mta = MTA(weights=weights, layer_map={"kind": "explicit"}, **knobs)
    mta.pairs = [LayerPair(1, 1, "word")]
    mta.projectors = nn.ModuleList([nn.Linear(D_S, D_T)])
    mask = torch.tensor([[1] * n + [0] * (L - n) for n in LENGTHS])
    side = SideBatch(
        torch.zeros(B, L, dtype=torch.long),
        mask,
        torch.zeros(B, L, dtype=torch.long) - 100,
        torch.zeros(B, L, 2, dtype=torch.long),
    )
    mem = collate_membership(UNITS, L)
    batch = Batch(side, side, [""] * B, [0] * B, torch.arange(B), grids={"word": SpanGrid(mem, mem)})
    h_s, h_t = torch.randn(B, L, D_S), torch.randn(B, L, D_T)
    logits = torch.randn(B, L, V)
    s_out = ModelOutput(logits=None, hidden_states={1: h_s})
    t_out = ModelOutput(logits=logits, hidden_states={1: h_t})
    return mta, batch, s_out, t_out, mask


def ref_terms(mta, batch, s_out, t_out, mask, weights: str):
    """The reference's DSA and HRA over (token, unit) pairs, in float64 loops."""
    h_s, h_t = s_out.hidden_states[1].double(), t_out.hidden_states[1].double()
    if weights == "uniform":  # --no-weight: token weights 1, every span mass 1
        w_s = w_t = w_m = mask.double()
    else:
        w_s, w_t = ref_self_similarity(h_s, mask, "all"), ref_self_similarity(h_t, mask, "all")
        w_m = w_t
        if weights == "entropy":
            p = torch.softmax(t_out.logits.double(), -1)
            w_m = (1 + (p * p.log()).sum(-1) / math.log(V)) * mask

        def renorm(w):  # gather_layer_weights over the (token, unit) pairs
            out = torch.zeros_like(w)
            for b in range(B):
                total = sum(float(w[b, t]) for u in UNITS[b] for t in u)
                for u in UNITS[b]:
                    for t in u:
                        out[b, t] = w[b, t] / total
            return out

        w_s, w_t, w_m = renorm(w_s), renorm(w_t), renorm(w_m)
    num = den = 0.0
    hra_num = hra_den = 0.0
    proj = nn.Linear(D_S, D_T).double()
    proj.load_state_dict(mta.projectors[0].state_dict())
    for b in range(B):
        cs, ct, m = [], [], []
        for u in UNITS[b]:
            cs.append(sum(w_s[b, t] * h_s[b, t] for t in u) / sum(w_s[b, t] for t in u))
            ct.append(sum(w_t[b, t] * h_t[b, t] for t in u) / sum(w_t[b, t] for t in u))
            m.append(1.0 if weights == "uniform" else float(sum(w_m[b, t] for t in u)))
            for t in u:
                cos = torch.nn.functional.cosine_similarity(proj(h_s[b, t]), h_t[b, t], dim=0)
                hra_num += float(w_m[b, t]) * (1 - float(cos))
                hra_den += float(w_m[b, t])
        for i in range(len(cs)):
            for j in range(len(cs)):
                if i != j:
                    gs = float(cs[i] @ cs[j] / (cs[i].norm() * cs[j].norm()))
                    gt = float(ct[i] @ ct[j] / (ct[i].norm() * ct[j].norm()))
                    num += m[i] * m[j] * (gs - gt) ** 2
                    den += m[i] * m[j]
    return num / den, hra_num / hra_den


@pytest.mark.parametrize("weights", ["self_similarity", "entropy", "uniform"])
def test_dsa_and_hra_follow_the_reference_pair_by_pair(weights):
    mta, batch, s_out, t_out, mask = fixture(weights)
    with torch.no_grad():
        terms = mta(s_out, t_out, batch, frozenset({"dsa", "hra"}))
    dsa, hra = ref_terms(mta, batch, s_out, t_out, mask, weights)
    assert float(terms["dsa"]) == pytest.approx(dsa, rel=2e-4, abs=1e-7)
    assert float(terms["hra"]) == pytest.approx(hra, rel=2e-5, abs=1e-7)


@pytest.mark.parametrize(
    "knobs",
    [
        {"multi_unit": "once"},
        {"ss_query_rows": "valid"},
        {"uniform_mass": "shares"},
        {"entropy_scope": "all"},
    ],
    ids=lambda k: next(iter(k.items()))[0],
)
def test_each_option_keeps_distillkits_earlier_rule_and_changes_the_terms(knobs):
    weights = (
        "uniform" if "uniform_mass" in knobs else "entropy" if "entropy_scope" in knobs else "self_similarity"
    )
    ref = fixture(weights)
    alt = fixture(weights, **knobs)
    with torch.no_grad():
        a = ref[0](*ref[2:4], ref[1], frozenset({"dsa", "hra"}))
        b = alt[0](*alt[2:4], alt[1], frozenset({"dsa", "hra"}))
    assert any(abs(float(a[t]) - float(b[t])) > 1e-6 for t in ("dsa", "hra")), (a, b)


def test_num_pairs_keeps_the_deepest_pairs_with_the_reference_split():
    cfg = compose_cfg(["model=gpt2-xl-to-gpt2", "layer_map.num_pairs=1"])
    pairs = resolve_layer_map(cfg.layer_map, cfg.model, 48, 12)
    assert [(p.teacher, p.student, p.level) for p in pairs] == [(48, 12, "phrase")]  # split 0 0 1 1
    cfg = compose_cfg(["model=gpt2-xl-to-gpt2", "layer_map.num_pairs=2"])
    pairs = resolve_layer_map(cfg.layer_map, cfg.model, 48, 12)
    assert [(p.teacher, p.student, p.level) for p in pairs] == [
        (36, 9, "word"),
        (48, 12, "phrase"),
    ]  # 0 1 2 2
    cfg = compose_cfg(["model=opt6.7b-to-opt1.3b", "layer_map.num_pairs=4"])
    pairs = resolve_layer_map(cfg.layer_map, cfg.model, 32, 24)
    assert [(p.teacher, p.student) for p in pairs] == [(23, 18), (26, 20), (29, 22), (32, 24)]
    assert [p.level for p in pairs] == ["word", "phrase", "phrase", "phrase"]
