"""SRA's token weights from a model's own attention (ctkd.md §2.2, §5.4 item 6), checked against a
direct float64 computation from the full eager attention map of a tiny random GPT-2."""

from __future__ import annotations

import pytest
import torch

from distillkit.spans.pooling import last_query_attention_weights, query_positions, query_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def eager_attentions():
    """A tiny random GPT-2 run eagerly on a right-padded batch: (attentions per layer, attention_mask)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=4)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    lengths = [9, 5, 2, 1]
    L = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (L - n) for n in lengths])
    ids = torch.randint(0, 64, (len(lengths), L)) * mask
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == 2
    return [a.double() for a in out.attentions], mask


def direct_weights(attn, mask, positions):
    """The formula written out: Σ_h A[b, h, q_b, j] over real keys j, normalized per sample."""
    B, H, L, _ = attn.shape
    out = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        q = int(positions[b])
        row = [sum(float(attn[b, h, q, j]) for h in range(H)) if mask[b, j] else 0.0 for j in range(L)]
        total = sum(row)
        out[b] = torch.tensor([r / total for r in row], dtype=torch.float64)
    return out


def test_query_positions():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert query_positions(right).tolist() == [2, 0, 3]
    assert query_positions(right.bool(), "last_real").tolist() == [2, 0, 3]
    assert query_positions(right, "last_position").tolist() == [3, 3, 3]
    left = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert query_positions(left).tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"query='first'.*\['last_real', 'last_position'\]"):
        query_positions(right, "first")


@pytest.mark.parametrize("layer", [0, 1])
def test_last_real_row_equals_direct_computation(eager_attentions, layer):
    attentions, mask = eager_attentions
    attn = attentions[layer]
    positions = query_positions(mask, "last_real")
    assert positions.tolist() == [8, 4, 1, 0]
    rows = query_rows(attn, positions)
    for b, q in enumerate(positions.tolist()):  # the selected row is the one of the full map
        torch.testing.assert_close(rows[b], attn[b, :, q, :])
    weights = last_query_attention_weights(rows, mask)
    assert weights.dtype == torch.float64 and not weights.requires_grad
    torch.testing.assert_close(weights, direct_weights(attn, mask, positions))
    torch.testing.assert_close(weights.sum(1), torch.ones(len(positions), dtype=torch.float64))
    assert (weights[mask == 0] == 0).all()
    assert (weights[mask == 1] > 0).all()
    # float32 rows (what a bf16/fp32 model delivers) give float32 weights, the same values
    w32 = last_query_attention_weights(rows.float(), mask)
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), weights, rtol=1e-5, atol=1e-6)


def test_last_position_is_the_release_quirk(eager_attentions):
    attentions, mask = eager_attentions
    attn = attentions[1]
    rows = query_rows(attn, query_positions(mask, "last_position"))
    weights = last_query_attention_weights(rows, mask)
    # the release: attentions[i-1].sum(dim=1)[:, -1], divided by its sum over all keys (no key mask)
    release = attn.sum(dim=1)[:, -1]
    release = release / release.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, release)
    torch.testing.assert_close(weights.sum(1), torch.ones(4, dtype=torch.float64))
    assert (weights[mask == 0] == 0).all()
    # only the full-length sample has its last real token at L - 1
    last_real = last_query_attention_weights(query_rows(attn, query_positions(mask)), mask)
    torch.testing.assert_close(weights[0], last_real[0])
    assert not torch.allclose(weights[1], last_real[1])


def test_weights_are_detached_and_zero_safe():
    rows = torch.rand(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    weights = last_query_attention_weights(rows, mask)
    assert not weights.requires_grad
    assert (weights[1] == 0).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0))
    # positive rescaling of the rows changes nothing (normalized)
    torch.testing.assert_close(last_query_attention_weights(rows * 7.5, mask), weights)


def test_missing_or_misshapen_attention_fails_loudly():
    mask = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        last_query_attention_weights(None, mask)
    with pytest.raises(ValueError, match=r"need rows \(B, H, L\)"):
        last_query_attention_weights(torch.rand(2, 4), mask)
    with pytest.raises(ValueError, match="5 keys but attention_mask has L=4"):
        last_query_attention_weights(torch.rand(2, 3, 5), mask)
    with pytest.raises(ValueError, match=r"need attn \(B, H, L, L\)"):
        query_rows(torch.rand(2, 3, 4), torch.tensor([0, 1]))
