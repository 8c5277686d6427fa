"""SRA as an objective: the properties of ctkd.md §5.4 on real (tiny) models, and runs on both pair shapes."""

from __future__ import annotations

import pytest
import torch

from distillkit.data.datamodule import DistillDataModule, collate
from distillkit.losses import com_loss, geometric_loss, salience, span_logit_loss
from distillkit.methods.base import Method, MethodSetupError
from distillkit.methods.sra import SRA
from distillkit.models.attention import EAGER, SDPA
from distillkit.models.pair import LoadedModel, load_tokenizer
from distillkit.module import run_forward
from distillkit.pipeline import train
from distillkit.spans.pooling import pool_spans
from tests.helpers import SMALL, compose_cfg, shrunken_qwen_to_gpt2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SRA_RUN = SMALL + ["method=sra", "callbacks=none"]
EXPLICIT = {"kind": "explicit", "teacher": [1, 2], "student": [1, 2], "num_pairs": None, "word_pairs": 0}


def tiny_gpt2(tok, attn: str, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def shared_setup(tmp_path_factory):
    """One tiny GPT-2 as both teacher and student on one tokenizer, a few annotated examples."""
    tok = load_tokenizer("tiny:bpe:2048", "student")
    cfg = compose_cfg(SMALL)
    return tok, cfg


def build(tok, cfg, model, **knobs):
    lm = LoadedModel(model, tok, "student")
    sra = SRA(layer_map=EXPLICIT, **knobs)
    method = Method(None, [sra], kd_rate=0.5)
    method.check_tokenizers(tok, tok)
    method.setup(lm, lm)
    dm = DistillDataModule(cfg.data, tok, tok, annotators=method.annotators(lm, lm), shared_tokenizer=True)
    dm.setup("fit")
    return method, collate(dm.examples["train"][:6])


def terms_of(method, model, batch, vocab):
    needs = method.student_needs.merge(method.teacher_needs)
    out = run_forward(model, batch.student, needs, vocab)
    return method(out, out, batch), out


def test_every_term_is_zero_when_the_student_is_the_teacher(shared_setup):
    tok, cfg = shared_setup
    model = tiny_gpt2(tok, SDPA)
    method, batch = build(tok, cfg, model, projector_init="identity")
    grid = batch.grids["aligned"]
    assert grid.student.span_mask.any()
    with torch.no_grad():
        terms, _ = terms_of(method, model, batch, len(tok))
    for name in ("com", "geometric", "span_logit"):
        assert abs(float(terms[name])) < 1e-6, (name, float(terms[name]))
    assert float(terms["ce"]) > 1.0  # only CE remains


def test_terms_equal_a_direct_computation_from_an_eager_forward(shared_setup):
    """The captured query rows (next to SDPA) give the same terms as pooling with the rows of a full eager
    attention map, and both capture implementations agree."""
    tok, cfg = shared_setup
    model = tiny_gpt2(tok, SDPA, seed=1)
    method, batch = build(tok, cfg, model, projector_init="xavier")
    sra = method.objective("sra")
    with torch.no_grad():
        got, _ = terms_of(method, model, batch, len(tok))
        eager = tiny_gpt2(tok, EAGER, seed=1)
        got_eager, _ = terms_of(method, eager, batch, len(tok))
        ref = tiny_gpt2(tok, "eager", seed=1)
        side = batch.student
        out = ref(
            input_ids=side.input_ids,
            attention_mask=side.attention_mask,
            output_attentions=True,
            output_hidden_states=True,
        )
    for name in ("com", "geometric", "span_logit"):
        torch.testing.assert_close(got[name], got_eager[name], rtol=1e-5, atol=1e-6)
    grid = batch.grids["aligned"]
    mask = grid.span_mask
    last = side.attention_mask.sum(1) - 1
    com, c_last, w_last = 0.0, None, None
    for k, pair in enumerate(sra.pairs):
        row = out.attentions[pair.student - 1][torch.arange(len(last)), :, last].sum(1)  # (B, L) head sum
        a = row * side.attention_mask / (row * side.attention_mask).sum(-1, keepdim=True)
        c, m = pool_spans(out.hidden_states[pair.student], grid.student, a)
        w = salience(m, mask)
        com = com + 0.5 * com_loss(sra.projectors[k](c), c, w, mask)
        c_last, w_last = c, w
    torch.testing.assert_close(got["com"], com, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        got["geometric"], geometric_loss(c_last, c_last, w_last, mask), rtol=1e-4, atol=1e-7
    )
    z = ref.lm_head(c_last)
    torch.testing.assert_close(got["span_logit"], span_logit_loss(z, z, mask), rtol=1e-4, atol=1e-6)


def test_state_dict_holds_only_the_projectors_and_they_decay_nothing(shared_setup):
    tok, cfg = shared_setup
    method, _ = build(tok, cfg, tiny_gpt2(tok, SDPA))
    keys = set(method.state_dict())
    assert keys == {"aux.0.projectors.0.weight", "aux.0.projectors.1.weight"}  # bias-free, no vocab ids
    (group,) = method.param_groups(1e-3, 5e-4)
    assert group["lr"] == 5e-4 and group["weight_decay"] == 0.0


def test_layer_index_zero_and_a_bad_choice_are_refused(shared_setup):
    tok, _ = shared_setup
    lm = LoadedModel(tiny_gpt2(tok, SDPA), tok, "student")
    sra = SRA(layer_map={**EXPLICIT, "teacher": [0, 2], "student": [0, 2]})
    with pytest.raises(MethodSetupError, match="index 0"):
        sra.setup(lm, lm)
    with pytest.raises(MethodSetupError, match="method.query='first'; valid: last_real, last_position"):
        SRA(query="first")


@pytest.fixture(scope="module")
def xtok_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sra_xtok")
    cfg = compose_cfg(SRA_RUN + ["model=tiny-xtok", "trainer.max_steps=2"], out_dir)
    return cfg, train(cfg, out_dir)


def test_sra_on_two_tokenizers_logs_every_term_and_never_trains_the_teacher(xtok_run):
    cfg, out = xtok_run
    assert {"train/ce", "train/com", "train/geometric", "train/span_logit"} <= set(out["metrics"])
    module, dm = out["module"], out["datamodule"]
    module.zero_grad()
    batch = collate(dm.examples["train"][:4])
    grid = batch.grids["aligned"]
    assert grid.student is not grid.teacher
    terms = module.compute_terms(batch)
    module.weighted_loss(terms).backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(p.grad is not None for p in module.method.objective("sra").projectors.parameters())
    w = module.method.weights
    expected = sum(w[k] * terms[k] for k in ("ce", "com", "geometric", "span_logit"))
    torch.testing.assert_close(module.weighted_loss(terms), expected)
    assert w == pytest.approx({"ce": 0.5, "com": 0.5, "geometric": 25.0, "span_logit": 0.5})


def test_sra_takes_a_base_objective_with_one_override(tmp_path):
    cfg = compose_cfg(SRA_RUN + ["method/base=sft", "trainer.max_steps=1"], tmp_path)
    out = train(cfg, tmp_path)
    assert out["method"].base.name == "sft" and out["method"].weights["ce"] == pytest.approx(1.0)


def test_sra_on_shrunken_qwen_to_gpt2_with_the_real_tokenizers_on_dolly(tmp_path, data_root):
    cfg = compose_cfg(
        ["method=sra", *shrunken_qwen_to_gpt2(data_root, teacher_layers=4)]
        + ["layer_map=explicit", "layer_map.teacher=[2,4]", "layer_map.student=[1,2]"]
        + ["data.max_train_rows=16", "trainer.max_steps=2", "trainer.log_every_n_steps=1"],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    assert {"train/ce", "train/com", "train/geometric", "train/span_logit"} <= set(out["metrics"])
    assert all(torch.isfinite(torch.tensor(out["metrics"][k])) for k in out["metrics"])


def test_every_sra_ablation_composes_on_the_paper_setting_and_is_tagged():
    from tests.helpers import group_options

    options = group_options("sra_ablation")
    assert {"no_com", "no_geometric", "no_span_logit", "reference_lcs", "mean_pooling", "no_salience"} <= set(
        options
    )
    for opt in options:
        cfg = compose_cfg(["experiment=sra_qwen_gpt2", f"sra_ablation={opt}"])
        assert cfg.tags.ablation == opt and cfg.method._target_.endswith("SRA")
    cfg = compose_cfg(["experiment=sra_qwen_gpt2", "sra_ablation=last_layer"])
    assert cfg.layer_map.kind.value == "last"
    cfg = compose_cfg(["experiment=sra_qwen_gpt2"])
    assert (cfg.trainer.max_epochs, cfg.trainer.optim.min_lr, cfg.trainer.gradient_clip_val) == (
        15,
        5e-6,
        None,
    )
    assert list(cfg.model.sra_teacher_layers) == [22, 24] and list(cfg.model.sra_student_layers) == [11, 12]
