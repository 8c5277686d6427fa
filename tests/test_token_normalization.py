"""The global token normalization of the DSKD family (``method.token_normalization=global``, DSKD's
``loss_denom``): every term a token sum, divided by the student response tokens of the whole accumulation
group on every device. One optimizer step over 4 micro-batches of 1 must then equal one step over a batch
of 4, gradient for gradient; per-micro-batch means (``micro_batch``) must not (the samples have different
response lengths)."""

from __future__ import annotations

import pytest
import torch

from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.kd import KD
from distillkit.methods.mta import MTA
from distillkit.types import ModelOutput
from tests.helpers import SMALL, compose_cfg


def _outputs(seed: int = 0, b: int = 3, length: int = 7, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, vocab, generator=g, dtype=torch.float64)
    t = torch.randn(b, length, vocab, generator=g, dtype=torch.float64)
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, :2] = -100
    labels[1, :5] = -100  # unequal response lengths
    labels[2, -1] = -100
    return ModelOutput(logits=s), ModelOutput(logits=t), labels


class _Side:
    def __init__(self, labels):
        self.labels = labels
        self.loss_mask = labels.ne(-100)


class _Batch:
    def __init__(self, labels):
        self.student = _Side(labels)
        self.teacher = self.student


def test_global_terms_are_token_sums_of_the_micro_batch_means():
    s, t, labels = _outputs()
    batch = _Batch(labels)
    n = int(labels.ne(-100).sum())
    mean = Method(KD(divergence="srkl", temperature=2.0), kd_rate=0.5)(s, t, batch)
    total = Method(KD(divergence="srkl", temperature=2.0), kd_rate=0.5, token_normalization="global")(
        s, t, batch
    )
    assert set(mean) == set(total) == {"ce", "kd"}
    for name in mean:
        torch.testing.assert_close(total[name], mean[name] * n, rtol=1e-6, atol=1e-8)
    # the CE sum, from the formula
    logp = torch.log_softmax(s.logits, -1)
    ce = sum(-float(logp[b, i, labels[b, i]]) for b in range(3) for i in range(7) if labels[b, i] != -100)
    assert float(total["ce"]) == pytest.approx(ce, rel=1e-6)  # CE is computed in float32


def test_global_normalization_is_refused_for_averaged_terms_and_bad_values():
    with pytest.raises(MethodSetupError, match=r"\['mta'\].*objectives that can: \[.*'dskd'.*'kd'"):
        Method(KD(), (MTA(),), token_normalization="global")
    with pytest.raises(MethodSetupError, match="token_normalization='per_token'; valid: micro_batch, global"):
        Method(KD(), token_normalization="per_token")


def test_the_dskd_v1_methods_default_to_the_global_count():
    from distillkit.pipeline import build_method

    for name in ("uld", "mined", "dskd", "dskd_cma"):
        assert compose_cfg([f"method={name}"]).method.token_normalization == "global", name
    for name in ("kd", "mta", "sra", "dskdv2_eta"):  # DistiLLM, MTA, SRA and DSKDv2 average per batch
        assert build_method(compose_cfg([f"method={name}"])).token_normalization == "micro_batch", name


def _one_step_grads(
    tmp_path, normalization: str, batch_size: int, accumulate: int
) -> dict[str, torch.Tensor]:
    from distillkit.pipeline import train

    cfg = compose_cfg(
        SMALL
        + [
            "method=dskd",
            f"method.token_normalization={normalization}",
            f"data.batch_size={batch_size}",
            f"trainer.accumulate_grad_batches={accumulate}",
            "trainer.max_steps=1",
            "trainer.gradient_clip_val=0",
            "trainer.optim.weight_decay=0",
            "data.synthetic.n_train=8",
            "callbacks=none",
            "final_eval=false",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    module = out["module"]
    params = dict(module.student.named_parameters()) | {
        f"method.{k}": v for k, v in module.method.named_parameters()
    }
    grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
    assert grads, "no gradients left after the step"
    return grads


@pytest.mark.parametrize("normalization", ["global", "micro_batch"])
def test_four_micro_batches_of_one_equal_one_batch_of_four(tmp_path, normalization):
    whole = _one_step_grads(tmp_path / "b4", normalization, batch_size=4, accumulate=1)
    parts = _one_step_grads(tmp_path / "b1x4", normalization, batch_size=1, accumulate=4)
    assert whole.keys() == parts.keys()
    worst = max(
        float((whole[k] - parts[k]).abs().max() / whole[k].abs().max().clamp_min(1e-12)) for k in whole
    )
    print(f"{normalization}: worst relative gradient difference {worst:.2e}")
    if normalization == "global":
        assert worst < 1e-4, worst  # float32 sums in a different order
    else:
        assert worst > 1e-2, worst  # per-micro-batch means weigh the short responses' tokens more
