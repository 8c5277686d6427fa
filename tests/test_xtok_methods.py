"""The cross-tokenizer base objectives as methods: every one runs on every pair shape (or is refused at
setup with a clear message), owns only its projectors, never trains the teacher, and never aligns in
the step."""

from __future__ import annotations

import pytest
import torch

from distillkit.data.datamodule import collate
from distillkit.methods.base import MethodSetupError
from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg, shrunken_qwen_to_gpt2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

XTOK = ("uld", "mined", "dskd_cma", "dskdv2_eta", "multilevel_ot")
TERMS = {
    "uld": {"uld"},
    "mined": {"mined"},
    "dskd": {"t2s_ce", "t2s_kd", "s2t_kd"},
    "dskd_cma": {"t2s_ce", "t2s_kd", "s2t_kd"},
    "dskdv2_eta": {"t2s_ce", "t2s_kd", "s2t_kd"},
    "multilevel_ot": {"ot_token", "ot_kl", "ot_seq"},
}
PROJECTORS = {
    "uld": set(),
    "mined": set(),
    "multilevel_ot": set(),
    "dskd": {"t2s", "s2t"},
    "dskd_cma": {"t2s", "s2t", "query"},
    "dskdv2_eta": {"t2s"},
}
RUN = SMALL + ["callbacks=none", "trainer.max_steps=2", "data.synthetic.n_train=24"]


@pytest.mark.parametrize("pair", ["tiny", "tiny-xtok"])
@pytest.mark.parametrize("method", sorted(TERMS))
def test_every_method_runs_on_both_tiny_pair_shapes(method, pair, tmp_path):
    cfg = compose_cfg(RUN + [f"method={method}", f"model={pair}"], tmp_path)
    if method == "dskd" and pair == "tiny-xtok":
        with pytest.raises(
            MethodSetupError, match="dskd needs one shared vocabulary.*dskd_cma or dskdv2_eta"
        ):
            train(cfg, tmp_path)
        return
    out = train(cfg, tmp_path)
    metrics = out["metrics"]
    assert {f"train/{t}" for t in TERMS[method]} | {"train/ce"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    base = out["method"].base
    prefixes = {k.split(".")[0] for k in base.state_dict()}
    assert prefixes == PROJECTORS[method], sorted(base.state_dict())  # no heads, embeddings, vocab maps
    module = out["module"]
    module.zero_grad()
    batch = collate(out["datamodule"].examples["train"][:4])
    module.weighted_loss(module.compute_terms(batch)).backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    opt_ids = [id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]]
    assert len(opt_ids) == len(set(opt_ids))
    assert {id(p) for p in base.parameters()} <= set(opt_ids)  # every projector is trained (ETA fix)


@pytest.fixture(scope="module")
def eta_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eta")
    cfg = compose_cfg(RUN + ["method=dskdv2_eta", "model=tiny-xtok"], out_dir)
    return train(cfg, out_dir)


def test_token_pairs_come_from_data_preparation_never_the_step(eta_run, monkeypatch):
    from distillkit.spans import token_pairs

    def boom(*args, **kwargs):
        raise AssertionError("aligned inside the step")

    monkeypatch.setattr(token_pairs, "eta_pairs", boom)
    monkeypatch.setattr(token_pairs, "mined_pairs", boom)
    monkeypatch.setattr(token_pairs, "dtw_path", boom)
    module, dm = eta_run["module"], eta_run["datamodule"]
    batch = collate(dm.examples["train"][:4])
    assert batch.pairs["eta"].mask.any()
    terms = module.compute_terms(batch)
    assert {"t2s_ce", "t2s_kd", "s2t_kd"} <= set(terms)


def test_eta_projector_starts_at_the_pinv_init_and_is_checkpointed(eta_run, tmp_path):
    base = eta_run["method"].base
    assert base.t2s.bias is None and base.t2s.weight.shape == (64, 128)
    path = tmp_path / "x.ckpt"
    eta_run["trainer"].save_checkpoint(str(path))
    state = torch.load(path, weights_only=False)["state_dict"]
    assert "method.base.t2s.weight" in state
    assert not [k for k in state if "pinv" in k or "teacher_to_student" in k]


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=sra", "method/base=uld"],
        ["method=sra", "method/base=dskdv2_eta"],
        ["method=mta", "method/base=dskdv2_eta", "method.hra_factor=0"],
        ["method=mta", "method/base=uld", "method.hra_factor=0"],
    ],
    ids=" ".join,
)
def test_auxiliary_objectives_stand_on_a_cross_tokenizer_base(overrides, tmp_path):
    cfg = compose_cfg(RUN + ["model=tiny-xtok", "trainer.max_steps=1"] + overrides, tmp_path)
    out = train(cfg, tmp_path)
    method = out["method"]
    base = overrides[1].split("=")[1]
    assert method.base.name == base and len(method.aux) == 1
    assert {f"train/{t}" for t in TERMS[base]} <= set(out["metrics"])


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TERMS))
def test_every_method_on_shrunken_qwen_to_gpt2_with_the_real_tokenizers(method, tmp_path, data_root):
    cfg = compose_cfg(
        [
            f"method={method}",
            *shrunken_qwen_to_gpt2(data_root),
            "data.max_train_rows=12",
            "trainer.max_steps=1",
        ],
        tmp_path,
    )
    if method == "dskd":
        with pytest.raises(MethodSetupError, match="one shared vocabulary"):
            train(cfg, tmp_path)
        return
    out = train(cfg, tmp_path)
    assert {f"train/{t}" for t in TERMS[method]} <= set(out["metrics"])
