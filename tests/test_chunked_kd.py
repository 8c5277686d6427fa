"""``method.chunk_size``: the KD divergence and the method's CE over chunks of positions give the same
loss and gradients as the unchunked path, both against a float64 golden computed here from the formula
(the losses themselves compute in float32 whatever the input dtype), and the key reaches both from the
config."""

from __future__ import annotations

import pytest
import torch

from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.kd import KD
from distillkit.pipeline import build_method
from distillkit.types import Batch, ModelOutput, SideBatch
from tests.helpers import compose_cfg


def _batch(B: int = 3, L: int = 7, V: int = 11, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L), generator=gen)
    labels = ids.roll(-1, 1)
    labels[:, :2] = -100  # prompt
    labels[0, -3:] = -100  # padding of the first row
    side = SideBatch(ids, torch.ones(B, L, dtype=torch.long), labels, torch.zeros(B, L, 2, dtype=torch.long))
    batch = Batch(student=side, teacher=side, texts=[""] * B, prompt_chars=[0] * B, index=torch.arange(B))
    s = torch.randn(B, L, V, generator=gen, dtype=torch.float64)
    t = torch.randn(B, L, V, generator=gen, dtype=torch.float64) * 2
    return batch, s, t


def _loss_and_grad(method: Method, batch, s, t):
    leaf = s.clone().requires_grad_(True)
    terms = method(ModelOutput(logits=leaf), ModelOutput(logits=t), batch)
    loss = sum(method.weights[k] * v for k, v in terms.items() if method.weights.get(k, 0.0))
    loss.backward()
    return {k: v.detach() for k, v in terms.items()}, loss.detach(), leaf.grad


def _golden(divergence: str, batch, s, t, T: float = 2.0, kd_rate: float = 0.5, lam: float = 0.1):
    """The method's loss in float64 from the formula: (1 - kd_rate) CE + kd_rate D, and its gradient."""
    leaf = s.clone().requires_grad_(True)
    labels = batch.student.labels
    keep = labels.ne(-100)
    logq_1 = torch.log_softmax(leaf, -1)
    ce = -logq_1.gather(-1, labels.clamp_min(0)[..., None])[..., 0][keep].mean()
    logq, logp = torch.log_softmax(leaf / T, -1), torch.log_softmax(t / T, -1)
    p, q = logp.exp(), logq.exp()
    if divergence == "fkl":
        rows = (p * (logp - logq)).sum(-1)
    else:  # srkl: KL(q || (1 - lam) p + lam q)
        rows = (q * (logq - torch.log((1 - lam) * p + lam * q))).sum(-1)
    loss = (1 - kd_rate) * ce + kd_rate * rows[keep].mean()
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("divergence", ["fkl", "srkl", "rkl", "js", "tvd", "skl", "akl"])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_method_equals_unchunked(divergence, chunk):
    batch, s, t = _batch()
    plain = Method(KD(divergence=divergence, temperature=2.0), kd_rate=0.5)
    chunked = Method(KD(divergence=divergence, temperature=2.0, chunk_size=chunk), kd_rate=0.5)
    assert plain.chunk_size is None and chunked.chunk_size == chunk
    terms_a, loss_a, grad_a = _loss_and_grad(plain, batch, s, t)
    terms_b, loss_b, grad_b = _loss_and_grad(chunked, batch, s, t)
    assert set(terms_a) == set(terms_b) == {"ce", "kd"}
    # float32 arithmetic inside the losses: the chunks' sums may round differently, nothing more
    for name in terms_a:
        torch.testing.assert_close(terms_b[name], terms_a[name], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-8)
    assert grad_a.abs().sum() > 0
    if divergence in ("fkl", "srkl"):
        gold_loss, gold_grad = _golden(divergence, batch, s, t)
        for loss, grad in ((loss_a, grad_a), (loss_b, grad_b)):
            torch.testing.assert_close(loss.double(), gold_loss, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(grad, gold_grad, rtol=1e-5, atol=1e-8, check_dtype=False)


def test_chunk_size_key_reaches_the_divergence_and_the_ce(monkeypatch):
    seen = []
    import distillkit.losses.divergences as D

    real = D._in_chunks

    def spy(fn, tensors, flat_mask, chunk_size):
        seen.append(chunk_size)
        return real(fn, tensors, flat_mask, chunk_size)

    monkeypatch.setattr(D, "_in_chunks", spy)
    kd = build_method(compose_cfg(["method=kd", "method.chunk_size=5"]))
    assert kd.chunk_size == 5 and kd.base.divergence_params()["chunk_size"] == 5
    batch, s, t = _batch()
    _loss_and_grad(kd, batch, s.float(), t.float())
    assert seen == [5, 5]  # CE, then the divergence
    mta = build_method(compose_cfg(["method=mta", "method.base.chunk_size=3"]))
    assert mta.chunk_size == 3
    assert build_method(compose_cfg(["method=kd"])).chunk_size is None  # default: unchunked
    assert build_method(compose_cfg(["method=sft"])).chunk_size is None


def test_non_positive_chunk_size_is_refused():
    with pytest.raises(MethodSetupError, match="method.chunk_size"):
        KD(chunk_size=0)
