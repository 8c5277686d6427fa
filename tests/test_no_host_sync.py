"""The training step's own code (the method, its losses, the weighted total) asks the device for no
value: no ``.item()``, ``float(tensor)``, ``int(tensor)``, ``.tolist()``, ``.cpu()`` or ``.numpy()``.

Each of those waits for the GPU to drain its queue. On the CPU the test cannot watch the device, so it
makes those calls raise while ``compute_terms``'s method call and ``weighted_loss`` run a step of kd and
mta on the tiny bench pair (the models' own forwards, HF code, are left out). On a GPU,
``benchmarks/bench_paper.py --sync-debug`` runs the step under ``torch.cuda.set_sync_debug_mode``,
which also sees the syncs these patches cannot (boolean-mask selection).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks import bench_methods as bm

SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    def refuse(name):
        def call(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside the training step (a host-device sync)")

        return call

    with monkeypatch.context() as m:
        for name in SYNCING:
            m.setattr(torch.Tensor, name, refuse(name))
        yield


@pytest.mark.parametrize("method", ["kd", "mta"])
def test_method_and_loss_read_nothing_back_from_the_device(method, monkeypatch):
    shape = bm.SHAPES["tiny"]
    teacher, student = bm.build_pair(shape)
    batch, _ = bm.build_batch(shape)
    module, optimizer = bm.build_module(method, shape, teacher, student)
    forward = module.method.forward

    def guarded(*args, **kwargs):
        with no_host_reads(monkeypatch):
            return forward(*args, **kwargs)

    monkeypatch.setattr(module.method, "forward", guarded)
    terms = module.compute_terms(batch)
    with no_host_reads(monkeypatch):
        loss = module.weighted_loss(terms)
        loss.backward()
    assert set(terms) >= {"ce", "kd"} and loss.requires_grad


def test_the_guard_catches_a_sync(monkeypatch):
    with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(()).item()
    with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="Tensor.__float__"):
        float(torch.ones(()))
    assert torch.ones(()).item() == 1.0  # restored afterwards


def test_mined_loss_reads_nothing_back_once_its_map_was_checked(monkeypatch):
    """MinED's id-range checks read the map and labels back; the objective checks its map once at setup
    and calls the loss with ``validate=False``, which gives the same value with no explicit read."""
    from distillkit.losses import mined_loss

    g = torch.Generator().manual_seed(0)
    s_logits = torch.randn(2, 6, 9, generator=g, requires_grad=True)
    t_logits = torch.randn(2, 7, 11, generator=g)
    labels = torch.randint(0, 9, (2, 6), generator=g)
    labels[:, :2] = -100
    pos = torch.tensor([[2, 3, 4], [2, 4, 5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    stu2tea = torch.tensor([0, 3, -1, 5, 10, 2, -1, 7, 1])
    checked = mined_loss(s_logits, t_logits, labels, pos, pos, mask, stu2tea)
    with no_host_reads(monkeypatch):
        quiet = mined_loss(s_logits, t_logits, labels, pos, pos, mask, stu2tea, validate=False)
        quiet.backward()
    torch.testing.assert_close(quiet, checked)
    with no_host_reads(monkeypatch), pytest.raises(AssertionError, match="Tensor.__int__|Tensor.item"):
        mined_loss(s_logits, t_logits, labels, pos, pos, mask, stu2tea)  # the checks do read back
