"""The inspection CLI: JSON output checked against the library, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from distillkit.spans.__main__ import main
from distillkit.spans.align import cosegment
from distillkit.spans.parsers import WordSpanParser
from tests.test_spans_membership import brute_membership


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_matches_brute_force(capsys, data_root, gpt2_tokenizer, qwen_tokenizer):
    gpt2, qwen = str(data_root / "tokenizers" / "gpt2"), str(data_root / "tokenizers" / "qwen2")
    text = "Hello  world, naïve café 😀!"
    code, out, _ = run(
        capsys,
        "inspect",
        "--text",
        text,
        "--parser",
        "words",
        "--tokenizer",
        gpt2,
        "--tokenizer",
        qwen,
        "--json",
        "--rule",
        "exact",
    )
    assert code == 0
    records = json.loads(out)
    spans = WordSpanParser().parse([text])[0]
    assert [(r["start"], r["end"], r["kind"], r["text"]) for r in records] == [
        (s.start, s.end, s.kind, text[s.start : s.end]) for s in spans
    ]
    for name, tok in (("gpt2", gpt2_tokenizer), ("qwen2", qwen_tokenizer)):
        enc = tok(text, return_offsets_mapping=True)
        expected = brute_membership(spans, enc["offset_mapping"], [True] * len(enc["input_ids"]), "exact")
        assert [r["tokens"][name] for r in records] == expected
        strings = tok.convert_ids_to_tokens(enc["input_ids"])
        assert [r["token_strings"][name] for r in records] == [[strings[t] for t in m] for m in expected]


def test_inspect_file_and_table(capsys, data_root):
    gpt2 = str(data_root / "tokenizers" / "gpt2")
    code, out, _ = run(
        capsys,
        "inspect",
        "--file",
        str(data_root / "vicuna" / "valid.jsonl"),
        "--limit",
        "2",
        "--parser",
        "spacy",
        "--tokenizer",
        gpt2,
        "--json",
    )
    records = json.loads(out)
    assert code == 0 and {r["text_index"] for r in records} == {0, 1}
    assert {r["kind"] for r in records} == {"np", "vp", "word"}
    code, out, _ = run(capsys, "inspect", "--text", "The cat sat.", "--parser", "words", "--tokenizer", gpt2)
    assert code == 0 and "'cat'" in out and "Ġcat" in out and "word" in out


def test_align_json_matches_cosegment(capsys, data_root, gpt2_tokenizer, qwen_tokenizer):
    gpt2, qwen = str(data_root / "tokenizers" / "gpt2"), str(data_root / "tokenizers" / "qwen2")
    text = "Hi  there 😀 中文 12345"
    code, out, _ = run(capsys, "align", "--tokenizer", gpt2, "--tokenizer", qwen, "--text", text, "--json")
    assert code == 0
    records = json.loads(out)
    a = gpt2_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    b = qwen_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    groups = cosegment(a, None, b, None)
    assert [(r["start"], r["end"], r["tokens"]["gpt2"], r["tokens"]["qwen2"]) for r in records] == [
        (g.start, g.end, g.tokens_a, g.tokens_b) for g in groups
    ]
    assert all(r["kind"] == "aligned" and r["text"] == text[r["start"] : r["end"]] for r in records)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "--text", "x", "--parser", "benepar", "--tokenizer", "T"], "invalid choice: 'benepar'"),
        (
            ["inspect", "--text", "x", "--parser", "words", "--tokenizer", "/no/such/dir"],
            "'/no/such/dir' does not exist",
        ),
        (
            [
                "inspect",
                "--text",
                "x",
                "--parser",
                "words",
                "--word-units",
                "phrase_words",
                "--tokenizer",
                "GPT2",
            ],
            "all_words",
        ),
        (["align", "--text", "x", "--tokenizer", "GPT2"], "exactly two"),
        (
            ["inspect", "--file", "FILE", "--field", "nope", "--parser", "words", "--tokenizer", "GPT2"],
            "no field 'nope'",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, data_root, argv, message):
    gpt2 = str(data_root / "tokenizers" / "gpt2")
    argv = [
        gpt2 if a == "GPT2" else str(data_root / "vicuna" / "valid.jsonl") if a == "FILE" else a for a in argv
    ]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
