"""Weight-decay groups (distillkit/utils/optim.py): biases and norm weights exempt, as DistiLLM/DSKD's
``get_optimizer_params`` does on GPT-2, generalised by module type to Llama/Qwen2 RMSNorm; projectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillkit.utils.optim import (
    REFERENCE_NO_DECAY_NAMES,
    NoDecay,
    no_decay_names,
    projector_groups,
    split_decay,
    student_param_groups,
)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def tiny_qwen2() -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


def test_gpt2_groups_equal_the_references_name_list():
    model = tiny_gpt2()
    names = [n for n, _ in model.named_parameters()]
    # DistiLLM/DSKD: a name containing any of the substrings goes to the weight-decay-0 group
    reference = {n for n in names if any(s in n for s in REFERENCE_NO_DECAY_NAMES)}
    assert no_decay_names(model) == reference
    # and the set is what one expects of GPT-2: every bias, ln_1/ln_2/ln_f weights, nothing else
    assert reference == {n for n in names if n.endswith(".bias") or ".ln_" in n}
    assert "transformer.wte.weight" not in reference and "transformer.h.0.attn.c_attn.weight" not in reference
    decay, no_decay = split_decay(model)
    assert {n for n, _ in no_decay} == reference
    assert len(decay) + len(no_decay) == len(names)  # every parameter once (lm_head is tied to wte)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def test_rmsnorm_weights_detected_by_type(build):
    model = build()
    names = [n for n, _ in model.named_parameters()]
    norm_types = {type(m).__name__ for m in model.modules() if "RMSNorm" in type(m).__name__}
    assert norm_types and all(t.endswith("RMSNorm") for t in norm_types)
    expected = {n for n in names if n.endswith(".bias") or "layernorm" in n or n == "model.norm.weight"}
    got = no_decay_names(model)
    assert got == expected
    n_layers = model.config.num_hidden_layers
    assert sum("layernorm" in n for n in got) == 2 * n_layers  # input + post-attention norm per block
    if build is tiny_qwen2:  # Qwen2 has q/k/v biases, Llama none
        assert {n for n in got if n.endswith(".bias")} == {
            f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(n_layers) for p in "qkv"
        }
    # the references' literal list only catches the biases on these families (their norms decay there)
    ref = no_decay_names(model, NoDecay.reference_names)
    assert ref == {n for n in names if "bias" in n}
    assert not any("norm" in n for n in ref)


def test_rule_none_decays_everything_and_bad_rule_is_named():
    model = tiny_gpt2()
    assert no_decay_names(model, "none") == set()
    with pytest.raises(ValueError, match=r"no_decay='norms'.*norms_and_biases, reference_names, none"):
        no_decay_names(model, "norms")


def test_frozen_parameters_left_out_and_groups_built():
    model = tiny_gpt2()
    for p in model.transformer.h[0].parameters():
        p.requires_grad_(False)
    groups = student_param_groups(model, lr=1e-4, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["student", "student.no_decay"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    grouped = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}


def test_adamw_decays_only_the_decay_group():
    """One AdamW step at lr 1 with zero gradients: only weight decay moves the weights (p -= lr*wd*p)."""
    model = tiny_gpt2()
    groups = student_param_groups(model, lr=1.0, weight_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0, weight_decay=0.123)  # the default must not leak in
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    exempt = no_decay_names(model)
    for n, p in model.named_parameters():
        factor = 1.0 if n in exempt else 0.5
        torch.testing.assert_close(p.detach(), before[n] * factor)


def test_projector_groups_follow_objective_override_then_reference():
    w = [nn.Parameter(torch.zeros(2))]
    groups = [
        {"params": w, "lr": 5e-4, "name": "mta.projectors"},
        {"params": w, "lr": 5e-4, "name": "sra.projectors"},
        {"params": w, "lr": 5e-4, "name": "custom.projectors", "weight_decay": 0.3},
    ]
    out = projector_groups(groups, weight_decay=0.01)
    assert [g["weight_decay"] for g in out] == [0.01, 0.0, 0.3]  # MTA/DSKD decay, SRA 0, own kept
    out = projector_groups(groups, weight_decay=0.01, override=0.2)
    assert [g["weight_decay"] for g in out] == [0.2, 0.2, 0.3]
    assert "weight_decay" not in groups[0]  # inputs untouched


def test_module_configure_optimizers_uses_the_groups(tmp_path):
    """DistillModule.configure_optimizers: student split in two, the MTA projectors at the run's decay."""
    from types import SimpleNamespace

    from distillkit.module import DistillModule

    class FakeMethod(nn.Module):
        teacher_needs = None

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 2)

        def param_groups(self, lr, projector_lr):
            return [{"params": list(self.proj.parameters()), "lr": projector_lr, "name": "mta.projectors"}]

    model = tiny_gpt2()
    student = SimpleNamespace(model=model, tokenizer=None, vocab_size=64)
    optim = SimpleNamespace(
        lr=1e-4, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, warmup_steps=0, warmup_ratio=0.0,
        schedule="cosine", projector_lr=5e-4, no_decay=NoDecay.norms_and_biases, projector_weight_decay=None,
    )  # fmt: skip
    module = DistillModule(student, None, FakeMethod(), optim)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure_optimizers reads
    opt = module.configure_optimizers()["optimizer"]
    summary = [(g["name"], g["weight_decay"], g["lr"]) for g in opt.param_groups]
    assert summary == [
        ("student", 0.01, 1e-4),
        ("student.no_decay", 0.0, 1e-4),
        ("mta.projectors", 0.01, 5e-4),
    ]


def test_optim_keys_compose_and_a_bad_rule_fails_at_compose_time():
    from tests.helpers import compose_cfg

    cfg = compose_cfg()
    assert cfg.trainer.optim.no_decay == NoDecay.norms_and_biases
    assert cfg.trainer.optim.projector_weight_decay is None
    assert compose_cfg(["trainer.optim.no_decay=none"]).trainer.optim.no_decay == NoDecay.none
    with pytest.raises(Exception) as err:
        compose_cfg(["trainer.optim.no_decay=norms"])
    text = str(err.value) + str(err.value.__cause__)
    assert "norms" in text and all(v.value in text for v in NoDecay)
