"""The spine end to end at a reduced size: train, freeze, resume, export, results, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit.methods.base import MethodSetupError
from distillkit.pipeline import ConfigError, train
from distillkit.run import run
from tests.helpers import SMALL, compose_cfg

FAST_CALLBACKS = [
    "callbacks.dev_rouge.max_prompts=4",
    "callbacks.dev_rouge.max_new_tokens=8",
    "~callbacks.lr_monitor",
]


def test_default_run_end_to_end(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose_cfg(
        SMALL + FAST_CALLBACKS + ["trainer.max_steps=-1", "eval.max_prompts=4", "eval.max_new_tokens=8"],
        tmp_path,
    )
    results = run(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "kd" and saved["model"] == "tiny" and saved["steps"] == results["steps"] > 0
    assert saved["batch"]["effective"] == cfg.data.batch_size
    assert {"train/ce", "train/kd", "train/loss"} <= set(saved["metrics"])
    assert "val/rougeL" in saved["metrics"]  # the dev generation metric ran at the end of the epoch
    assert saved["eval"]["sets"]["synthetic"]["n_prompts"] == 4
    assert saved["provenance"]["versions"]["torch"] == torch.__version__
    assert saved["config"]["method"]["divergence"] == "fkl"
    # the exported student reloads with from_pretrained, without any projector weights
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert model.config.n_layer == cfg.model.student.arch_config.n_layer and len(tok) > 100
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_teacher_is_frozen_and_bit_identical_after_training(tmp_path):
    cfg = compose_cfg(SMALL + ["callbacks=none", "trainer.max_steps=4"], tmp_path)
    out = train(cfg, tmp_path)
    module = out["module"]
    teacher = module.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # reload the cached SFT teacher from disk and compare every tensor bit for bit
    from transformers import AutoModelForCausalLM

    from distillkit.pipeline import ensure_sft_teacher

    fresh = AutoModelForCausalLM.from_pretrained(ensure_sft_teacher(cfg))
    for (name, a), (_, b) in zip(teacher.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    opt_params = {id(p) for g in out["trainer"].optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in teacher.parameters())
    # checkpoints leave the teacher out
    path = tmp_path / "plain.ckpt"
    out["trainer"].save_checkpoint(str(path))
    assert not any(k.startswith("teacher.") for k in torch.load(path, weights_only=False)["state_dict"])


def _fixed_batch(dm):
    from distillkit.data.datamodule import collate

    return collate(dm.examples["train"][:16])


def test_loss_decreases_on_tiny_data(tmp_path):
    cfg = compose_cfg(
        SMALL
        + [
            "callbacks=none",
            "method=sft",
            "data.synthetic.n_train=32",
            "trainer.max_steps=40",
            "trainer.max_epochs=20",
            "trainer.optim.lr=3e-3",
            "trainer.optim.schedule=constant",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    module, batch = out["module"], _fixed_batch(out["datamodule"])
    module.eval()
    with torch.no_grad():
        after = module.weighted_loss(module.compute_terms(batch)).item()
    # the same architecture, untrained, on the same batch
    torch.manual_seed(0)
    from distillkit.models.pair import load_model

    fresh = load_model(cfg.model.student, "student", cfg.cache_dir)
    from distillkit.module import DistillModule

    before_module = DistillModule(fresh, None, out["method"], cfg.trainer.optim).eval()
    with torch.no_grad():
        before = before_module.weighted_loss(before_module.compute_terms(batch)).item()
    assert after < 0.7 * before, (before, after)


def test_kd_on_a_cross_tokenizer_pair_fails_before_weights_load(tmp_path, monkeypatch):
    from distillkit.models import pair

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded before the method check")

    monkeypatch.setattr(pair, "load_model", no_weights)
    monkeypatch.setattr("distillkit.pipeline.load_model", no_weights)
    cfg = compose_cfg(SMALL + ["model=tiny-xtok", "callbacks=none"], tmp_path)
    with pytest.raises(MethodSetupError, match="shared vocabulary"):
        train(cfg, tmp_path)


def test_tiny_xtok_tokenizes_with_offsets_both_ways(tmp_path):
    from distillkit.data.datamodule import DistillDataModule
    from distillkit.models.pair import load_tokenizer, same_vocabulary

    cfg = compose_cfg(SMALL + ["model=tiny-xtok"])
    t = load_tokenizer(cfg.model.teacher.tokenizer, "teacher")
    s = load_tokenizer(cfg.model.student.tokenizer, "student")
    assert not same_vocabulary(t, s)
    dm = DistillDataModule(cfg.data, s, t)
    dm.setup()
    ex = dm.examples["train"][0]
    assert ex.student.input_ids[0] == s.bos_token_id and not ex.student.valid[0]  # Unigram adds BOS
    assert t.bos_token_id is None or ex.teacher.input_ids[0] != t.bos_token_id or ex.teacher.valid[0]
    for enc in (ex.student, ex.teacher):
        assert max(e for (s_, e), v in zip(enc.offsets, enc.valid) if v) == len(ex.text)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["resume=/no/such.ckpt"], ConfigError, "resume='/no/such.ckpt'"),
        (
            ["method=mta", "layer_map=explicit", "layer_map.teacher=[2,9]", "layer_map.student=[1,2]"],
            ValueError,
            "the teacher has 4 layers",
        ),
        (["method.kd_rate=1.5"], MethodSetupError, "kd_rate"),
        (["method=mta", "layer_map=explicit"], ConfigError, "layer_map.teacher=\\[...\\]"),
        (["+method.terms.nonsense=0"], MethodSetupError, "unknown term"),
    ],
)
def test_bad_inputs_fail_early_with_a_clear_message(tmp_path, overrides, error, match):
    cfg = compose_cfg(SMALL + ["callbacks=none"] + overrides, tmp_path)
    with pytest.raises(error, match=match):
        train(cfg, tmp_path)


def test_gpt2_shapes_with_the_real_tokenizer_on_real_dolly_rows(tmp_path, data_root):
    """The issue's check: srkl KD on gpt2-xl-to-gpt2, random-init and shrunk, real tokenizer, real rows."""
    tok = str(data_root / "tokenizers" / "gpt2")
    cfg = compose_cfg(
        [
            "method=kd",
            "method.divergence=srkl",
            "model=gpt2-xl-to-gpt2",
            "model.teacher.init=random",
            "model.student.init=random",
            f"model.teacher.tokenizer={tok}",
            f"model.student.tokenizer={tok}",
            "model.teacher.layers=2",
            "model.teacher.hidden=64",
            "model.teacher.heads=2",
            "model.student.layers=1",
            "model.student.hidden=32",
            "model.student.heads=2",
            "model.teacher.dtype=float32",
            "data=dolly",
            f"data.root={data_root}",
            "data.max_train_rows=16",
            "data.max_dev_rows=4",
            "data.batch_size=4",
            "trainer.max_steps=2",
            "callbacks=none",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    assert out["trainer"].global_step == 2
    assert out["metrics"]["train/kd"] > 0


def test_stage_teacher_sft_trains_and_exports_the_teacher(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = compose_cfg(
        SMALL + ["stage=teacher_sft", "callbacks=none", "trainer.max_steps=2", "final_eval=false"], tmp_path
    )
    results = run(cfg)
    assert results["stage"] == "teacher_sft" and results["steps"] == 2
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    assert teacher.config.n_embd == cfg.model.teacher.arch_config.n_embd


def test_runs_are_tagged_with_method_ablation_and_experiment(tmp_path):
    import yaml

    cfg = compose_cfg(
        SMALL
        + [
            "method=mta",
            "ablation=no_dsa",
            "logger=csv",
            "~callbacks.dev_rouge",
            "~callbacks.lr_monitor",
            "trainer.max_steps=1",
            "final_eval=false",
        ],
        tmp_path,
    )
    results = run(cfg)
    assert results["tags"]["ablation"] == "no_dsa" and results["tags"]["terms.dsa"] == 0.0
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert (
        hparams["tags/ablation"] == "no_dsa"
        and hparams["tags/method"] == "mta"
        and hparams["tags/level"] == "both"
    )
