"""MTA: layer maps, projectors, the method's terms on real batches, ablations as overrides."""

from __future__ import annotations

import types

import pytest
import torch

from distillkit.data.datamodule import collate
from distillkit.models.layer_map import resolve_layer_map
from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg

MTA = SMALL + ["method=mta", "callbacks=none"]


def test_reference_layer_maps_and_the_word_phrase_split():
    cfg = compose_cfg(["model=gpt2-xl-to-gpt2"])
    pairs = resolve_layer_map(cfg.layer_map, cfg.model, 48, 12)
    assert [(p.teacher, p.student, p.level) for p in pairs] == [
        (24, 6, "word"),
        (36, 9, "phrase"),
        (48, 12, "phrase"),
    ]
    cfg = compose_cfg(["model=qwen-to-gpt2", "layer_map.num_pairs=2"])  # the deepest two, as the scripts
    assert [(p.teacher, p.student) for p in resolve_layer_map(cfg.layer_map, cfg.model, 24, 12)] == [
        (18, 6),
        (24, 8),
    ]
    cfg = compose_cfg(["layer_map=uniform", "layer_map.num_pairs=3"])
    assert [(p.teacher, p.student) for p in resolve_layer_map(cfg.layer_map, cfg.model, 6, 3)] == [
        (2, 1),
        (4, 2),
        (6, 3),
    ]
    cfg = compose_cfg(["layer_map=last"])
    assert [(p.teacher, p.student, p.level) for p in resolve_layer_map(cfg.layer_map, cfg.model, 6, 3)] == [
        (6, 3, "phrase")
    ]
    assert {p.level for p in resolve_layer_map(compose_cfg([]).layer_map, cfg.model, 4, 2, "word")} == {
        "word"
    }


def test_out_of_range_layers_name_the_depth():
    cfg = compose_cfg(["model=gpt2-xl-to-gpt2"])
    with pytest.raises(ValueError, match="the student has 4 layers.*0..4"):
        resolve_layer_map(cfg.layer_map, cfg.model, 48, 4)


@pytest.fixture(scope="module")
def mta_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mta")
    cfg = compose_cfg(MTA + ["trainer.max_steps=3"], out_dir)
    return cfg, train(cfg, out_dir)


def test_mta_trains_and_logs_every_term(mta_run):
    cfg, out = mta_run
    assert {"train/ce", "train/kd", "train/dsa", "train/hra", "train/loss"} <= set(out["metrics"])
    m = out["method"].objective("mta")
    assert out["method"].weights == pytest.approx({"ce": 0.0, "kd": 1.0, "dsa": 2.0, "hra": 0.2})
    assert len(m.projectors) == len(m.pairs) == 2
    assert m.projectors[0].in_features == 64 and m.projectors[0].out_features == 128


def test_total_loss_is_the_reference_combination(mta_run):
    """(1-λ)CE + λ(KD + w_span * mean_pairs(DSA + HRA/10)), recomputed from the logged terms."""
    cfg, out = mta_run
    module, dm = out["module"], out["datamodule"]
    batch = collate(dm.examples["train"][:8])
    terms = module.compute_terms(batch)
    lam, w = cfg.method.kd_rate, cfg.method.w_span
    expected = (1 - lam) * terms["ce"] + lam * (terms["kd"] + w * (terms["dsa"] + terms["hra"] / 10))
    torch.testing.assert_close(module.weighted_loss(terms), expected)


def test_gradients_reach_student_and_projectors_never_the_teacher(mta_run):
    cfg, out = mta_run
    module, dm = out["module"], out["datamodule"]
    module.zero_grad()
    batch = collate(dm.examples["train"][:8])
    terms = module.compute_terms(batch)
    (terms["dsa"] + terms["hra"]).backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in module.method.objective("mta").projectors.parameters()
    )
    assert module.student.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.teacher.parameters())


def test_projectors_are_checkpointed_and_left_out_of_the_export(mta_run, tmp_path):
    from distillkit.models.pair import export_student

    cfg, out = mta_run
    path = tmp_path / "x.ckpt"
    out["trainer"].save_checkpoint(str(path))
    state = torch.load(path, weights_only=False)["state_dict"]
    assert any(k.startswith("method.aux.0.projectors.0.") for k in state)
    exported = export_student(out["module"].student, out["student"].tokenizer, tmp_path / "student")
    from safetensors.torch import load_file

    keys = load_file(str(exported / "model.safetensors")).keys()
    assert not any("projector" in k for k in keys)


def test_spans_come_from_data_preparation_not_the_step(mta_run, monkeypatch):
    """The training step never parses: the parser is only reached through the span cache, in setup."""
    from distillkit.spans import parsers

    cfg, out = mta_run

    def boom(self, texts):  # noqa: ARG001
        raise AssertionError("parser called inside the step")

    monkeypatch.setattr(parsers.SpacySpanParser, "parse", boom)
    module, dm = out["module"], out["datamodule"]
    batch = collate(dm.examples["train"][8:16])
    assert set(batch.grids) == {"word", "phrase"}
    module.compute_terms(batch)  # no parse
    ann = dm.report["annotations"]["train"]
    assert ann["spans"]["phrase"]["kept"] > 0 and ann["spans"]["word"]["kept"] > 0


@pytest.mark.parametrize(
    "ablation",
    [
        ["method.level=word"],
        ["method.level=phrase"],
        ["method.terms.dsa=0"],
        ["method.terms.hra=0"],
        ["method.weights=uniform"],
        ["method.weights=entropy"],
        ["method.weights=attention"],
        ["layer_map.num_pairs=1"],
        ["method.w_span=0.5"],
        ["span_parser.word_units=all_words"],
        ["span_parser=words"],
        ["layer_map=uniform", "layer_map.num_pairs=2"],
        ["method.span_region=response", "method.membership_rule=exact"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_ablation_composes_and_runs_a_step(tmp_path, ablation):
    cfg = compose_cfg(MTA + ["trainer.max_steps=1", "data.synthetic.n_train=16"] + ablation, tmp_path)
    out = train(cfg, tmp_path)
    metrics, method = out["metrics"], out["method"]
    assert out["trainer"].global_step == 1
    for term in ("dsa", "hra"):
        assert (f"train/{term}" in metrics) == (method.weights[term] != 0), term
    tags = method.tags()
    assert tags["level"] == cfg.method.level.value and tags["num_pairs"] == len(method.objective("mta").pairs)


def _bracketed(text: str) -> tuple[str, list[tuple[int, int]]]:
    """A bracketed constituency tree over the words of ``text``: (S (NP w1 w2) (VP w3 ...)) per line."""
    import re

    words = [(m.start(), m.end()) for m in re.finditer(r"\w+|[^\w\s]", text)]
    leaves = [f"(NN {text[a:b]})" if text[a:b].isalnum() else "(PUNCT x)" for a, b in words]
    half = max(1, len(leaves) // 2)
    tree = f"(ROOT (S (NP {' '.join(leaves[:half])}) (VP (VB v) (NP {' '.join(leaves[half:])}))))"
    # the VP's first leaf is synthetic: give it a zero-width span at the start of the second half
    return tree, words


def test_stanza_parser_runs_a_step_on_trees_read_with_stanzas_reader(tmp_path, monkeypatch):
    """Stanza's English models are not available offline: the pipeline is replaced by one that returns
    documents whose constituency trees are real stanza Trees read from bracketed strings."""
    import stanza
    from stanza.models.constituency.tree_reader import read_trees

    class FakePipeline:
        def __init__(self, **kwargs):
            self.calls = 0

        def bulk_process(self, docs):
            out = []
            for doc in docs:
                text = doc.text
                tree, words = _bracketed(text)
                leaves_chars = list(words)
                half = max(1, len(words) // 2)
                leaves_chars.insert(half, (words[half][0] if half < len(words) else len(text),) * 2)
                t = read_trees(tree)[0]
                toks = [
                    types.SimpleNamespace(
                        start_char=a, end_char=b, words=[types.SimpleNamespace(start_char=a, end_char=b)]
                    )
                    for a, b in leaves_chars
                ]
                sent = types.SimpleNamespace(constituency=t, tokens=toks)
                out.append(types.SimpleNamespace(sentences=[sent]))
            return out

    monkeypatch.setattr(stanza, "Pipeline", FakePipeline)
    cfg = compose_cfg(
        MTA
        + ["trainer.max_steps=1", "data.synthetic.n_train=8", "data.synthetic.n_dev=4", "span_parser=stanza"],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    ann = out["datamodule"].report["annotations"]["train"]
    assert ann["parser"] == "stanza" and ann["spans"]["phrase"]["kept"] > 0
    assert "train/dsa" in out["metrics"]


def test_mta_on_shrunken_gpt2_with_the_real_tokenizer_on_dolly(tmp_path, data_root):
    tok = str(data_root / "tokenizers" / "gpt2")
    cfg = compose_cfg(
        [
            "method=mta",
            "model=gpt2-xl-to-gpt2",
            "model.teacher.init=random",
            "model.student.init=random",
            f"model.teacher.tokenizer={tok}",
            f"model.student.tokenizer={tok}",
            "model.teacher.layers=3",
            "model.teacher.hidden=64",
            "model.teacher.heads=2",
            "model.student.layers=2",
            "model.student.hidden=32",
            "model.student.heads=2",
            "model.teacher.dtype=float32",
            "layer_map=explicit",
            "layer_map.teacher=[1,2,3]",
            "layer_map.student=[1,1,2]",
            "data=dolly",
            f"data.root={data_root}",
            "data.max_train_rows=8",
            "data.max_dev_rows=4",
            "data.batch_size=4",
            "data.max_total_tokens=256",
            "data.max_prompt_tokens=192",
            "trainer.fast_dev_run=true",
            "callbacks=none",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    assert {"train/dsa", "train/hra", "train/kd"} <= set(out["metrics"])
    assert [(p.teacher, p.student, p.level) for p in out["method"].objective("mta").pairs] == [
        (1, 1, "word"),
        (2, 1, "phrase"),
        (3, 2, "phrase"),
    ]
