"""Rows -> prompts -> each model's own tokenization with offsets; labels, EOS, filters, reports."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit.data.datamodule import DistillDataModule, EpochSeededSampler, collate
from distillkit.data.encode import encode
from distillkit.data.sources import load_splits, validate_row
from distillkit.data.template import format_prompt
from distillkit.errors import DataError
from tests.helpers import compose_cfg


@pytest.mark.parametrize("which", ["gpt2_tokenizer", "qwen_tokenizer"])
def test_encode_offsets_labels_and_eos_on_real_tokenizers(which, request):
    tok = request.getfixturevalue(which)
    prompt = format_prompt({"instruction": "Name a café in Zürich 😀.", "input": ""})
    response = "Café  Odeon\n\nis 世界 famous."
    enc = encode(tok, prompt, response)
    text = prompt + response
    assert enc.input_ids[-1] == tok.eos_token_id  # EOS appended and trained on
    assert enc.labels[-2] == tok.eos_token_id and enc.labels[-1] == -100
    # labels are the next tokens from the last prompt token on, -100 before
    n = enc.prompt_len
    assert all(lbl == -100 for lbl in enc.labels[: n - 1])
    assert enc.labels[n - 1 : -1] == enc.input_ids[n:]
    # offsets point into the shared text and reproduce it (byte-level pieces may share a char span)
    spans = [(s, e) for (s, e), v in zip(enc.offsets, enc.valid) if v]
    assert spans[0][0] == 0 and max(e for _, e in spans) == len(text)
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert not enc.valid[-1] and enc.offsets[-1] == (0, 0)
    # the response tokens are exactly what tokenizing the response alone gives
    assert enc.input_ids[n:-1] == tok(response, add_special_tokens=False)["input_ids"]


def test_validate_row_reasons():
    assert validate_row({"instruction": "a", "output": "b"}) is None
    assert validate_row({"instruction": "a", "output": ["b", "c"]}) is None
    assert validate_row({"output": "b"}) == "missing_instruction"
    assert validate_row({"instruction": "a", "output": "  "}) == "empty_output"
    assert validate_row({"instruction": "a", "output": []}) == "empty_output"
    assert validate_row({"instruction": "a", "input": 3, "output": "x"}) == "bad_input"
    assert validate_row("text") == "not_an_object"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_source_counts_malformed_rows_and_filters_long_ones(tmp_path, gpt2_tokenizer):
    (tmp_path / "d").mkdir()
    good = [{"instruction": f"Say {i}.", "input": "", "output": f"number {i}"} for i in range(6)]
    bad = [{"instruction": "", "output": "x"}, {"instruction": "a", "output": ""}]
    long = [{"instruction": "word " * 300, "output": "short"}]
    _write(tmp_path / "d" / "train.part1.jsonl", good[:3] + bad)
    _write(tmp_path / "d" / "train.part2.jsonl", good[3:] + long)
    _write(tmp_path / "d" / "dev.jsonl", good[:2])
    cfg = compose_cfg(
        [
            "data=dolly",
            f"data.root={tmp_path}",
            "data.train=d/train.part*.jsonl",
            "data.dev=d/dev.jsonl",
            "data.test=null",
        ]
    ).data
    splits, report = load_splits(cfg)
    assert len(splits["train"]) == 7 and report.dropped["train"] == {
        "missing_instruction": 1,
        "empty_output": 1,
    }
    assert report.files["train"] == ["d/train.part1.jsonl", "d/train.part2.jsonl"]
    dm = DistillDataModule(cfg, gpt2_tokenizer, gpt2_tokenizer, shared_tokenizer=True)
    dm.setup()
    assert len(dm.examples["train"]) == 6  # the 300-word prompt is dropped, not truncated
    assert dm.report["filtered"]["train"] == {"too_long": 1, "kept": 6}


def test_length_filter_takes_the_max_over_both_tokenizers(tmp_path, gpt2_tokenizer, qwen_tokenizer):
    # CJK text: GPT-2 needs many more tokens than Qwen, so only GPT-2's count can drop the row
    row = {"instruction": "翻译" * 40, "output": "好"}
    _write(tmp_path / "train.jsonl", [row, {"instruction": "Hi.", "output": "Hello."}])
    cfg = compose_cfg(
        [
            "data=dolly",
            f"data.root={tmp_path}",
            "data.train=train.jsonl",
            "data.dev=null",
            "data.test=null",
            "data.max_prompt_tokens=100",
        ]
    ).data
    g = encode(gpt2_tokenizer, format_prompt(row), row["output"]).prompt_len
    q = encode(qwen_tokenizer, format_prompt(row), row["output"]).prompt_len
    assert q <= 100 < g
    dm = DistillDataModule(cfg, qwen_tokenizer, gpt2_tokenizer)
    dm.setup()
    assert len(dm.examples["train"]) == 1


def test_missing_files_give_a_clear_error(tmp_path):
    cfg = compose_cfg(["data=dolly", f"data.root={tmp_path}"]).data
    with pytest.raises(DataError, match="data.train='dolly/train.part\\*.jsonl' matches no file"):
        load_splits(cfg)


def _with_bad_json_lines(tmp_path):
    """A train file whose lines 2 and 5 are not JSON (a truncated row, a stray word) and a clean dev file."""
    rows = [json.dumps({"instruction": f"Say {i}.", "output": f"number {i}"}) for i in range(4)]
    lines = [rows[0], '{"instruction": "cut off", "outp', rows[1], "", "oops", rows[2], rows[3]]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    _write(tmp_path / "dev.jsonl", [{"instruction": "Hi.", "output": "Hello."}])
    return [
        "data=dolly",
        f"data.root={tmp_path}",
        "data.train=train.jsonl",
        "data.dev=dev.jsonl",
        "data.test=null",
    ]


def test_a_line_that_is_not_json_fails_naming_file_and_line_by_default(tmp_path):
    cfg = compose_cfg(_with_bad_json_lines(tmp_path)).data
    assert str(cfg.on_bad_rows) == "fail"
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid JSON .*data\.on_bad_rows=skip"):
        load_splits(cfg)


def test_on_bad_rows_skip_drops_and_counts_the_lines(tmp_path, caplog):
    cfg = compose_cfg(_with_bad_json_lines(tmp_path) + ["data.on_bad_rows=skip"]).data
    with caplog.at_level("WARNING", logger="distillkit"):
        splits, report = load_splits(cfg)
    assert [r["instruction"] for r in splits["train"]] == [f"Say {i}." for i in range(4)]
    assert report.dropped["train"] == {"bad_json": 2}  # the blank line 4 is not a row, not counted
    assert report.as_dict()["bad_lines"] == {"train": ["train.jsonl:2", "train.jsonl:5"]}
    assert any(
        "skipped 2 line(s)" in r.getMessage() and "lines 2, 5" in r.getMessage() for r in caplog.records
    )


def test_on_bad_rows_is_a_closed_choice():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["data.on_bad_rows=ignore"])
    text = str(err.value) + str(err.value.__cause__)
    assert "fail" in text and "skip" in text


def test_real_dolly_rows_load(data_root):
    cfg = compose_cfg(["data=dolly", f"data.root={data_root}", "data.max_train_rows=50"]).data
    splits, report = load_splits(cfg)
    assert len(splits["train"]) == 50 and len(splits["dev"]) == 1000 and len(splits["test"]) == 500
    assert report.files["train"] == ["dolly/train.part1-of-2.jsonl", "dolly/train.part2-of-2.jsonl"]


def test_sinst_reference_lists_are_kept(data_root, gpt2_tokenizer):
    cfg = compose_cfg(
        [
            "data=dolly",
            f"data.root={data_root}",
            "data.train=sinst/11_/valid.jsonl",
            "data.dev=null",
            "data.test=null",
            "data.max_train_rows=20",
        ]
    ).data
    dm = DistillDataModule(cfg, gpt2_tokenizer, gpt2_tokenizer, shared_tokenizer=True)
    dm.setup()
    ex = dm.examples["train"][0]
    assert isinstance(ex.references, list) and ex.text.endswith(ex.references[0])


def test_collate_masks_padding_by_attention(gpt2_tokenizer, qwen_tokenizer):
    from distillkit.data.encode import Example

    exs = []
    for i, resp in enumerate(["short", "a much longer response than the first one"]):
        p = format_prompt({"instruction": "Reply."})
        exs.append(
            Example(
                i, p + resp, len(p), [resp], encode(gpt2_tokenizer, p, resp), encode(qwen_tokenizer, p, resp)
            )
        )
    batch = collate(exs)
    s, t = batch.student, batch.teacher
    assert batch.num_tokens == int(s.attention_mask.sum())  # counted on the host at collate time
    assert s.input_ids.shape[0] == 2 and s.input_ids.shape[1] != t.input_ids.shape[1]
    for side, encs in ((s, [e.student for e in exs]), (t, [e.teacher for e in exs])):
        assert side.attention_mask.sum(1).tolist() == [len(e.input_ids) for e in encs]
        assert (side.labels[side.attention_mask == 0] == -100).all()
        assert side.loss_mask.sum().item() == sum(sum(1 for x in e.labels if x != -100) for e in encs)


def test_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(50, 7), EpochSeededSampler(50, 7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) == list(b)
    assert torch.equal(torch.tensor(list(EpochSeededSampler(5, 1))).sort().values, torch.arange(5))
