"""The method seam: composition of a base and auxiliary objectives, model handles, attention on demand,
alignments as types in the batch, and what a checkpoint holds."""

from __future__ import annotations

import pytest
import torch

from distillkit.data.datamodule import collate, collate_pairs
from distillkit.methods import build_method
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.kd import KD
from distillkit.methods.sft import SFT
from distillkit.models.attention import SDPA, AttentionCaptureError, capture_attention
from distillkit.models.handles import InputEmbedding, OutputHead
from distillkit.module import run_forward
from distillkit.pipeline import train
from distillkit.types import Needs, SideBatch
from tests.helpers import SMALL, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MTA = SMALL + ["method=mta", "callbacks=none"]

#: a small random model of every family that ships a pair (vocab 96, 2 layers)
FAMILIES = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "mistral": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "opt": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "ffn_dim": 64,
        "word_embed_proj_dim": 32,
        "max_position_embeddings": 64,
    },
}
VOCAB = 96


def family_model(arch: str, attn: str | None = None, vocab_rows: int = VOCAB):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=vocab_rows, **FAMILIES[arch])
    kwargs = {"attn_implementation": attn} if attn else {}
    return AutoModelForCausalLM.from_config(config, **kwargs).eval()


def padded_side(B: int = 3, L: int = 9, lengths=(9, 6, 4)) -> SideBatch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB - 8, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return SideBatch(
        ids, mask, ids.roll(-1, 1).masked_fill(mask == 0, -100), torch.zeros(B, L, 2, dtype=torch.long)
    )


# ----------------------------------------------------------------------------- composition
def test_composite_weights_are_the_mixing_of_its_objectives():
    m = Method(KD(divergence="srkl"), (), kd_rate=0.3, terms={"kd": 2.0})
    assert m.structural_weights() == pytest.approx({"ce": 0.7, "kd": 0.3})
    assert m.weights == pytest.approx({"ce": 0.7, "kd": 0.6})
    # sft as a base adds its CE weight to the mixing one: (1-λ)CE + λ(CE + aux) = CE + λ·aux
    assert Method(SFT(), (), kd_rate=0.4).weights == pytest.approx({"ce": 1.0})
    assert Method(SFT(), (), kd_rate=0.4).teacher_needs is None


def test_a_bad_choice_names_the_valid_values():
    with pytest.raises(MethodSetupError, match="method.divergence='fk'; valid: fkl, rkl"):
        KD(divergence="fk")
    with pytest.raises(MethodSetupError, match="kd_rate"):
        Method(KD(), (), kd_rate=1.5)
    with pytest.raises(MethodSetupError, match="only one base"):
        Method(KD(), (SFT(),))


def test_the_base_is_swapped_with_one_override_and_the_preset_is_unchanged():
    cfg = compose_cfg(["method=mta", "method/base=sft"])
    method = build_method(dict(__import__("omegaconf").OmegaConf.to_container(cfg.method, resolve=True)))
    assert method.base.name == "sft" and [a.name for a in method.aux] == ["mta"]
    assert method.weights == pytest.approx({"ce": 1.0, "dsa": 2.0, "hra": 0.2})
    preset = compose_cfg(["method=mta"])
    assert preset.method.base._target_.endswith("KD") and preset.method.base.divergence.value == "srkl"


def test_mta_on_an_sft_base_runs_and_logs_ce_dsa_hra_and_no_kd(tmp_path):
    cfg = compose_cfg(MTA + ["method/base=sft", "trainer.max_steps=2"], tmp_path)
    out = train(cfg, tmp_path)
    metrics = out["metrics"]
    assert {"train/ce", "train/dsa", "train/hra"} <= set(metrics) and "train/kd" not in metrics
    tags = out["method"].tags()
    assert tags["base"] == "sft" and tags["aux"] == ["mta"] and tags["w_span"] == 2.0


def test_composite_total_is_the_sum_of_its_weighted_terms(tmp_path):
    cfg = compose_cfg(MTA + ["method.kd_rate=0.7", "method.terms.hra=3.0", "trainer.max_steps=1"], tmp_path)
    out = train(cfg, tmp_path)
    module, dm = out["module"], out["datamodule"]
    terms = module.compute_terms(collate(dm.examples["train"][:8]))
    mta = out["method"].objective("mta")
    expected = (
        0.3 * terms["ce"]
        + 0.7 * terms["kd"]
        + 0.7 * mta.w_span * terms["dsa"]
        + 0.7 * mta.w_span * mta.hra_factor * 3.0 * terms["hra"]
    )
    torch.testing.assert_close(module.weighted_loss(terms), expected)


def test_mta_across_tokenizers_is_refused_by_its_base_not_by_mta(tmp_path):
    cfg = compose_cfg(SMALL + ["method=mta", "model=tiny-xtok"], tmp_path)
    with pytest.raises(MethodSetupError, match="the kd base objective .* shared vocabulary.*method/base"):
        train(cfg, tmp_path)


def test_mta_runs_on_two_tokenizers_on_a_base_that_needs_no_shared_vocabulary(tmp_path):
    cfg = compose_cfg(MTA + ["model=tiny-xtok", "method/base=sft", "trainer.max_steps=1"], tmp_path)
    with pytest.raises(MethodSetupError, match="method.hra_factor=0"):
        train(cfg, tmp_path)
    cfg = compose_cfg(
        MTA + ["model=tiny-xtok", "method/base=sft", "method.hra_factor=0", "trainer.max_steps=1"], tmp_path
    )
    out = train(cfg, tmp_path)
    batch = collate(out["datamodule"].examples["train"][:4])
    grid = batch.grids["phrase"]
    assert grid.student is not grid.teacher and grid.student.span_mask.shape == grid.teacher.span_mask.shape
    assert "train/dsa" in out["metrics"]


# ----------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_holds_the_student_projectors_and_optimizer_only(tmp_path):
    cfg = compose_cfg(MTA + ["trainer.max_steps=1"], tmp_path)
    out = train(cfg, tmp_path)
    method = out["method"]
    keys = set(method.state_dict())
    assert keys and all(k.startswith("aux.0.projectors.") for k in keys), sorted(keys)
    path = tmp_path / "size.ckpt"
    out["trainer"].save_checkpoint(str(path))
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["state_dict"]
    assert not [k for k in state if k.startswith("teacher.") or "lm_head" in k and k.startswith("method.")]
    student = out["module"].student

    def nbytes(tensors):  # tied weights (GPT-2's lm_head is wte) share one storage: count it once
        return sum({t.untyped_storage().data_ptr(): t.numel() * t.element_size() for t in tensors}.values())

    params = nbytes(student.state_dict().values()) + nbytes(method.state_dict().values())
    opt_state = sum(
        nbytes(v for v in s.values() if torch.is_tensor(v))
        for s in ckpt["optimizer_states"][0]["state"].values()
    )
    assert nbytes(state.values()) == pytest.approx(params, rel=1e-6)
    # the whole file: weights + projectors + optimizer state, within 1%, plus a fixed ~40 KB of zip records
    # and loop/callback state that only matters for a model this tiny (2.7 MB)
    assert abs(path.stat().st_size - (params + opt_state)) <= 0.01 * (params + opt_state) + 64 * 1024
    groups = ckpt["optimizer_states"][0]["param_groups"]
    ids = [i for g in groups for i in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter in two groups


# ----------------------------------------------------------------------------- handles
@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_head_handle_reproduces_the_logits_and_the_embedding_handle_the_lookup(arch):
    model = family_model(arch, vocab_rows=VOCAB + 8)  # embedding rows beyond the tokenizer (Qwen-style)
    side = padded_side()
    needs = Needs(logits=True, hidden_states=(2,), head=True, embeddings=True)
    out = run_forward(model, side, needs, vocab_size=VOCAB)
    assert out.logits.shape[-1] == VOCAB and out.head.weight.shape[0] == VOCAB
    torch.testing.assert_close(out.head(out.hidden_states[2]), out.logits, rtol=1e-5, atol=1e-5)
    emb = out.embed(side.input_ids)
    torch.testing.assert_close(emb, model.get_input_embeddings().weight[side.input_ids])
    assert isinstance(out.head, OutputHead) and isinstance(out.embed, InputEmbedding)


def test_handles_are_never_submodules_of_the_method(tmp_path):
    cfg = compose_cfg(MTA + ["trainer.max_steps=1"], tmp_path)
    out = train(cfg, tmp_path)
    method_params = {id(p) for p in out["method"].parameters()}
    assert not method_params & {id(p) for p in out["module"].student.parameters()}
    assert not method_params & {id(p) for p in out["module"].teacher.parameters()}


# ----------------------------------------------------------------------------- attention on demand
@pytest.mark.parametrize("arch", sorted(FAMILIES))
@pytest.mark.parametrize("query", ["last_real", "last_position"])
def test_captured_rows_and_maps_equal_the_eager_attention(arch, query):
    side = padded_side()
    eager = family_model(arch, "eager")
    with torch.no_grad():
        ref = eager(input_ids=side.input_ids, attention_mask=side.attention_mask, output_attentions=True)
    for impl in ("distillkit_sdpa", "distillkit_eager"):
        model = family_model(arch, impl)
        needs = Needs(attentions=(0,), attention_rows=(1,), attention_query=query)
        with torch.no_grad():
            out = run_forward(model, side, needs, VOCAB)
        assert set(out.attentions) == {0} and set(out.attention_rows) == {1}  # only the named layers
        valid = side.attention_mask.bool()
        full = out.attentions[0]
        want = ref.attentions[0].float()
        q_valid = valid[:, None, :, None] & valid[:, None, None, :]
        torch.testing.assert_close(full * q_valid, want * q_valid, rtol=1e-5, atol=1e-6)
        L = side.input_ids.shape[1]
        pos = valid.sum(1) - 1 if query == "last_real" else torch.full((3,), L - 1)
        row = ref.attentions[1][torch.arange(3), :, pos].float()
        if query == "last_position":  # the padded query row: keys restricted to the real tokens
            row = row * valid[:, None]
            row = row / row.sum(-1, keepdim=True)
        torch.testing.assert_close(out.attention_rows[1], row, rtol=1e-5, atol=1e-6)
        assert out.attention_rows[1].shape == (3, 4, L)


def test_a_model_whose_attention_returns_no_weights_fails_loudly():
    model = family_model("gpt2", "sdpa")
    side = padded_side()
    with pytest.raises(
        AttentionCaptureError, match="attn_implementation='sdpa'.*model.teacher.attn_implementation"
    ):
        with capture_attention(model, Needs(attention_rows=(0,)), side.attention_mask, "teacher"):
            pass
    # an implementation that never reaches the capture hook: named, never silently uniform
    model = family_model("gpt2", SDPA)
    model.transformer.h[0].attn.forward = lambda *a, **k: (a[0], None)
    with pytest.raises(AttentionCaptureError, match="layers \\[0\\] produced no weights"):
        run_forward(model, side, Needs(attention_rows=(0,)), VOCAB, "teacher")


def test_a_configured_attention_without_weights_is_refused_at_setup(tmp_path):
    cfg = compose_cfg(MTA + ["method.weights=attention", "+model.teacher.attn_implementation=sdpa"], tmp_path)
    with pytest.raises(MethodSetupError, match="model.teacher.attn_implementation='sdpa'"):
        train(cfg, tmp_path)


# ----------------------------------------------------------------------------- alignments as types
def test_token_pairs_collate_padded_and_masked():
    pairs = collate_pairs([[(1, 2), (3, 3)], [], [(0, 5)]])
    assert pairs.student_pos.tolist() == [[1, 3], [0, 0], [0, 0]]
    assert pairs.teacher_pos.tolist() == [[2, 3], [0, 0], [5, 0]]
    assert pairs.mask.tolist() == [[True, True], [False, False], [True, False]]
