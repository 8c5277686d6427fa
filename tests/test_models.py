"""Model pairs: random init from YAML architecture settings with normalized shrink overrides,
real tokenizers, clear errors for missing weights/tokenizers, vocabulary comparison, export."""

from __future__ import annotations

import pytest
import torch

from distillkit.models.pair import ModelLoadError, build_config, export_student, load_model, same_vocabulary
from tests.helpers import compose_cfg, group_options

PAIRS = [p for p in group_options("model") if not p.startswith("tiny")]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_every_family_shrinks_with_the_same_keys(pair, role, gpt2_tokenizer):
    side = compose_cfg(
        [
            f"model={pair}",
            f"model.{role}.layers=2",
            f"model.{role}.hidden=64",
            f"model.{role}.heads=4",
            f"model.{role}.intermediate=128",
        ]
    ).model[role]
    config = build_config(side, gpt2_tokenizer, role)
    assert config.num_hidden_layers == 2 and config.hidden_size == 64 and config.num_attention_heads == 4
    assert config.vocab_size >= len(gpt2_tokenizer) or side.arch_config.get("vocab_size")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    out = model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape[-1] == 64


def test_reference_layer_maps_fit_the_full_depths():
    for pair in PAIRS:
        m = compose_cfg([f"model={pair}"]).model
        assert (
            max(m.teacher_layers)
            <= m.teacher.arch_config[
                "num_hidden_layers" if "num_hidden_layers" in m.teacher.arch_config else "n_layer"
            ]
        )
        assert len(m.teacher_layers) == len(m.student_layers)


def test_missing_weights_name_the_path_and_the_key(tmp_path):
    side = compose_cfg(
        [
            "model=gpt2-xl-to-gpt2",
            f"model.student.path={tmp_path}/nope",
            f"model.student.tokenizer={tmp_path}/nope",
        ]
    ).model.student
    with pytest.raises(ModelLoadError) as err:
        load_model(side, "student")
    assert "nope" in str(err.value) and "model.student.tokenizer" in str(err.value)


def test_missing_hub_weights_offline_say_where_to_point(data_root):
    side = compose_cfg(
        ["model=gpt2-xl-to-gpt2", f"model.teacher.tokenizer={data_root}/tokenizers/gpt2"]
    ).model.teacher
    with pytest.raises(ModelLoadError) as err:
        load_model(side, "teacher")
    assert "MiniLLM/teacher-gpt2-1.5B" in str(err.value) and "model.teacher.path" in str(err.value)


def test_real_tokenizers_and_vocabulary_comparison(gpt2_tokenizer, qwen_tokenizer):
    assert len(gpt2_tokenizer) == 50257 and len(qwen_tokenizer) == 151646
    assert same_vocabulary(gpt2_tokenizer, gpt2_tokenizer)
    assert not same_vocabulary(gpt2_tokenizer, qwen_tokenizer)


def test_pretrained_round_trip_and_export(tmp_path, gpt2_tokenizer, data_root):
    """from_pretrained of a local folder: a tiny model saved by the test, then exported and reloaded."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    src = tmp_path / "src"
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_layer=1, n_embd=32, n_head=2)).save_pretrained(src)
    gpt2_tokenizer.save_pretrained(src)
    side = compose_cfg(["model=gpt2-xl-to-gpt2", f"model.student.path={src}"]).model.student
    loaded = load_model(side, "student")
    assert loaded.vocab_size == 50257 and loaded.num_layers == 1
    out = export_student(loaded.model, loaded.tokenizer, tmp_path / "student")
    again = AutoModelForCausalLM.from_pretrained(out)
    for (n, a), (_, b) in zip(loaded.model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_qwen_embedding_rows_beyond_the_vocabulary_are_sliced(qwen_tokenizer):
    """Qwen's embedding has more rows than tokens: logits are cut to the tokenizer's vocabulary."""
    from distillkit.module import run_forward
    from distillkit.types import Needs, SideBatch

    side = compose_cfg(
        [
            "model=qwen-to-gpt2",
            "model.teacher.init=random",
            "model.teacher.layers=1",
            "model.teacher.hidden=32",
            "model.teacher.heads=2",
            "model.teacher.intermediate=64",
            "model.teacher.dtype=float32",
            f"model.teacher.tokenizer={qwen_tokenizer.name_or_path}",
        ]
    ).model.teacher
    loaded = load_model(side, "teacher")
    assert loaded.model.get_input_embeddings().num_embeddings == 151936
    ids = torch.tensor([[1, 2, 3]])
    sb = SideBatch(ids, torch.ones_like(ids), ids, torch.zeros(1, 3, 2, dtype=torch.long))
    out = run_forward(loaded.model, sb, Needs(logits=True), loaded.vocab_size)
    assert out.logits.shape[-1] == 151646


def test_lora_student_trains_only_adapters(tmp_path, gpt2_tokenizer):
    side = compose_cfg(
        [
            "model=opt6.7b-to-opt1.3b",
            "model.student.init=random",
            "model.student.layers=1",
            "model.student.hidden=32",
            "model.student.heads=2",
            "model.student.intermediate=64",
            f"model.student.tokenizer={gpt2_tokenizer.name_or_path}",
        ]
    ).model.student
    loaded = load_model(side, "student")
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
