"""MinED's DTW pairs and ETA's exact pairs, on real GPT-2 / Qwen2 tokenizations of Dolly rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from distillkit.data.encode import Example, encode
from distillkit.data.template import format_prompt
from distillkit.spans import token_pairs as TP
from distillkit.utils.io import read_jsonl
from distillkit.vocab import teacher_to_student_lut, token_bytes, vocab_map, vocab_of
from tests.test_vocab import levenshtein


# ----------------------------------------------------------------------------- fixtures
def make_examples(rows, student_tok, teacher_tok) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        prompt = format_prompt(row)
        response = row["output"] if isinstance(row["output"], str) else row["output"][0]
        s = encode(student_tok, prompt, response)
        t = s if teacher_tok is student_tok else encode(teacher_tok, prompt, response)
        out.append(Example(i, prompt + response, len(prompt), [response], s, t))
    return out


@pytest.fixture(scope="module")
def dolly_rows(data_root):
    rows = read_jsonl(data_root / "dolly" / "valid.jsonl")
    text = [format_prompt(r) + str(r["output"]) for r in rows]
    non_ascii = [r for r, t in zip(rows, text) if not t.isascii()]
    assert len(non_ascii) >= 20, "expected non-ASCII Dolly rows"
    return random.Random(0).sample(rows, 120) + non_ascii[:40]


@pytest.fixture(scope="module")
def real_examples(dolly_rows, gpt2_tokenizer, qwen_tokenizer):
    """Student GPT-2, teacher Qwen2 (the qwen-to-gpt2 pair)."""
    return make_examples(dolly_rows, gpt2_tokenizer, qwen_tokenizer)


@pytest.fixture(scope="module")
def tiny_pair():
    from transformers import AutoTokenizer

    from distillkit.models.tokenizers import cached_tiny_tokenizer

    return (
        AutoTokenizer.from_pretrained(str(cached_tiny_tokenizer("bpe", 1000))),
        AutoTokenizer.from_pretrained(str(cached_tiny_tokenizer("unigram", 1000))),
    )


# ----------------------------------------------------------------------------- DTW
def reference_dtw(cost):
    """DSKD's dtw written out: full DP with infinite borders, traceback diag > up > left on ties."""
    n, m = len(cost), len(cost[0])
    inf = float("inf")
    acc = [[inf] * (m + 1) for _ in range(n + 1)]
    acc[0][0] = 0.0
    for i in range(n):
        for j in range(m):
            acc[i + 1][j + 1] = cost[i][j] + min(acc[i][j + 1], acc[i + 1][j], acc[i][j])
    d = [row[1:] for row in acc[1:]]
    i, j, path = n - 1, m - 1, []
    while i > 0 or j > 0:
        path.append((i, j))
        options = [
            d[i - 1][j - 1] if i > 0 and j > 0 else inf,
            d[i - 1][j] if i > 0 else inf,
            d[i][j - 1] if j > 0 else inf,
        ]
        move = options.index(min(options))
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    path.append((0, 0))
    return path[::-1]


@pytest.mark.parametrize("seed", range(40))
def test_dtw_matches_the_reference_on_tie_heavy_costs(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 14, size=2)
    cost = rng.integers(0, 3, size=(n, m))  # few values: many ties, so the tie-breaking is exercised
    assert TP.dtw_path(cost) == reference_dtw(cost.tolist())


def test_dtw_identity_and_errors():
    cost = 1 - np.eye(5, dtype=int)
    assert TP.dtw_path(cost) == [(k, k) for k in range(5)]
    with pytest.raises(ValueError, match="non-empty 2-D"):
        TP.dtw_path(np.zeros((0, 3)))


# ----------------------------------------------------------------------------- MinED pairs
def reference_mined_pairs(ex: Example, student_tok, teacher_tok):
    """DSKD's transform_step_logits_fast alignment step written out from ctkd.md §3.2."""
    sp = [p for p, y in enumerate(ex.student.labels) if y != -100]
    tp = [p for p, y in enumerate(ex.teacher.labels) if y != -100]
    s_tok = [
        t.replace("Ġ", "").replace("▁", "")
        for t in student_tok.convert_ids_to_tokens([ex.student.input_ids[p] for p in sp])
    ]
    t_tok = [
        t.replace("Ġ", "").replace("▁", "")
        for t in teacher_tok.convert_ids_to_tokens([ex.teacher.input_ids[p] for p in tp])
    ]
    path = reference_dtw([[levenshtein(a, b) for b in s_tok] for a in t_tok])
    by_student = {}
    for i, j in path:
        by_student.setdefault(j, []).append(i)
    return [(sp[j], tp[i[0]]) for j, i in sorted(by_student.items()) if len(i) == 1]


def test_mined_pairs_match_the_reference(real_examples, gpt2_tokenizer, qwen_tokenizer):
    short = [ex for ex in real_examples if len(TP.response_positions(ex.teacher)) < 70]
    chosen = [ex for ex in short if ex.text.isascii()][:3] + [ex for ex in short if not ex.text.isascii()][:2]
    assert len(chosen) == 5
    s_vocab, t_vocab = vocab_of(gpt2_tokenizer), vocab_of(qwen_tokenizer)
    for ex in chosen:
        expected = reference_mined_pairs(ex, gpt2_tokenizer, qwen_tokenizer)
        assert TP.mined_pairs(ex.student, ex.teacher, s_vocab, t_vocab) == expected


def test_mined_pairs_properties_and_the_id_check(real_examples, gpt2_tokenizer, qwen_tokenizer):
    # the exact-string LUT stands in for the MinED map here (the full MinED map is a slow build)
    lut = teacher_to_student_lut(qwen_tokenizer, gpt2_tokenizer, "exact")
    annotate = TP.mined_pairs_annotator(gpt2_tokenizer, qwen_tokenizer, tea2stu=lut, name="mined")
    plain = TP.mined_pairs_annotator(gpt2_tokenizer, qwen_tokenizer, name="all")
    stats = annotate(real_examples)
    assert plain(real_examples)["without_pairs"] == 0
    assert stats["examples"] == len(real_examples) and stats["without_pairs"] <= 2  # e.g. an all-CJK answer
    assert 0.8 < stats["coverage"] <= 1.0
    for ex in real_examples:
        pairs, unchecked = ex.pairs["mined"], ex.pairs["all"]
        assert set(pairs) <= set(unchecked)
        s_resp, t_resp = set(TP.response_positions(ex.student)), set(TP.response_positions(ex.teacher))
        s_pos, t_pos = [s for s, _ in unchecked], [t for _, t in unchecked]
        assert set(s_pos) <= s_resp and set(t_pos) <= t_resp
        assert all(a < b for a, b in zip(s_pos, s_pos[1:]))  # one pair per student position, in order
        assert all(a <= b for a, b in zip(t_pos, t_pos[1:]))  # monotone (a teacher token may serve two)
        for s, t in pairs:
            assert ex.student.input_ids[s] == int(lut[ex.teacher.input_ids[t]])
        dropped = set(unchecked) - set(pairs)
        assert all(ex.student.input_ids[s] != int(lut[ex.teacher.input_ids[t]]) for s, t in dropped)


def test_mined_annotator_rejects_a_wrong_map(gpt2_tokenizer, qwen_tokenizer):
    with pytest.raises(ValueError, match=r"tea2stu has shape \(10,\).*\(151646,\)"):
        TP.mined_pairs_annotator(gpt2_tokenizer, qwen_tokenizer, tea2stu=torch.zeros(10, dtype=torch.long))


# ----------------------------------------------------------------------------- ETA pairs
def reference_align_sequences(s_tokens, t_tokens, s_eos, t_eos):
    """DSKDv2's align_sequences written out from ctkd.md §3.5 (strings with Ġ/▁ stripped)."""
    s = [x.replace("▁", "").replace("Ġ", "") for x in s_tokens]
    t = [x.replace("▁", "").replace("Ġ", "") for x in t_tokens]
    i = j = 0
    hs = ht = ""
    pairs = []
    while i < len(t) and j < len(s):
        if ht == hs and (t[i] == s[j] or (t_tokens[i] == t_eos and s_tokens[j] == s_eos)):
            ht, hs = ht + t[i], hs + s[j]
            pairs.append((j, i))
            i, j = i + 1, j + 1
        elif len(ht) > len(hs):
            hs, j = hs + s[j], j + 1
        elif len(ht) < len(hs):
            ht, i = ht + t[i], i + 1
        else:
            ht, hs, i, j = ht + t[i], hs + s[j], i + 1, j + 1
    return pairs


def check_eta_properties(examples, student_tok, teacher_tok, name="eta"):
    s_vocab, t_vocab = vocab_of(student_tok), vocab_of(teacher_tok)
    for ex in examples:
        pairs = ex.pairs[name]
        assert pairs, ex.text[:80]
        sp, tp = TP.response_positions(ex.student), TP.response_positions(ex.teacher)
        assert {s for s, _ in pairs} <= set(sp) and {t for _, t in pairs} <= set(tp)
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pairs, pairs[1:]))  # strictly monotone
        # EOS with EOS: the last pair joins the two final EOS labels, and no other pair has an EOS
        assert pairs[-1] == (sp[-1], tp[-1])
        assert ex.student.labels[sp[-1]] == s_vocab.eos and ex.teacher.labels[tp[-1]] == t_vocab.eos
        for s, t in pairs[:-1]:
            ys, yt = ex.student.labels[s], ex.teacher.labels[t]
            assert ys != s_vocab.eos and yt != t_vocab.eos
            # the two label tokens spell the same bytes, spaces included ...
            a = token_bytes(s_vocab.tokens[ys], s_vocab.byte_level)
            b = token_bytes(t_vocab.tokens[yt], t_vocab.byte_level)
            if a != b:  # only a SentencePiece phantom space on the response's first token may differ
                assert s == sp[0] and t == tp[0] and a.lstrip(b" ") == b.lstrip(b" "), (a, b)
            assert a.strip(b" ") or a == b
            # ... at the same place of the text: they end at the same character
            assert ex.student.offsets[s + 1][1] == ex.teacher.offsets[t + 1][1]


def test_eta_pairs_on_real_texts(real_examples, gpt2_tokenizer, qwen_tokenizer):
    stats = TP.eta_pairs_annotator(gpt2_tokenizer, qwen_tokenizer)(real_examples)
    assert stats["name"] == "eta" and stats["without_pairs"] == 0 and 0.7 < stats["coverage"] < 1.0
    check_eta_properties(real_examples, gpt2_tokenizer, qwen_tokenizer)
    assert any(not ex.text.isascii() for ex in real_examples)


def test_eta_pairs_agree_with_dskdv2_on_byte_level_pairs(real_examples, gpt2_tokenizer, qwen_tokenizer):
    """Both tokenizers are byte-level, where DSKDv2's string test is a byte test. The pairs are DSKDv2's,
    except that DSKDv2 also pairs two whitespace runs of different lengths (``Ġ`` with ``ĠĠ``: both
    strip to ""), after which it can lose the next real pair; here only identical tokens pair."""
    s_vocab, t_vocab = vocab_of(gpt2_tokenizer), vocab_of(qwen_tokenizer)
    exact = 0
    for ex in real_examples[:80]:
        sp, tp = TP.response_positions(ex.student), TP.response_positions(ex.teacher)
        s_tok = [s_vocab.tokens[ex.student.labels[p]] for p in sp]
        t_tok = [t_vocab.tokens[ex.teacher.labels[p]] for p in tp]
        ref = reference_align_sequences(s_tok, t_tok, "<|endoftext|>", "<|endoftext|>")
        ours = TP.eta_pairs(ex.student, ex.teacher, s_vocab, t_vocab, text=ex.text)
        assert {(sp[j], tp[i]) for j, i in ref if s_tok[j] == t_tok[i]} <= set(ours)
        if not any(x.replace("Ġ", "") == "" for x in s_tok + t_tok):
            assert ours == [(sp[j], tp[i]) for j, i in ref]
            exact += 1
    assert exact >= 40


def test_eta_pairs_decode_bytes_across_space_markers(dolly_rows, tiny_pair):
    """Byte-level BPE (Ġ, byte pieces) vs Unigram (▁, <0xNN> fallback): pairs still join equal bytes."""
    bpe, uni = tiny_pair
    examples = make_examples(dolly_rows[:40] + dolly_rows[-20:], bpe, uni)
    TP.eta_pairs_annotator(bpe, uni)(examples)
    check_eta_properties(examples, bpe, uni)
    assert sum(len(ex.pairs["eta"]) for ex in examples) > 0.5 * sum(
        len(TP.response_positions(ex.student)) for ex in examples
    )
    # the Unigram's phantom "▁" on the response's first token ("▁Some" for "Some") is ignored given the text
    s_vocab, t_vocab = vocab_of(bpe), vocab_of(uni)

    def first_paired(pairs, ex):
        return bool(pairs) and pairs[0] == (
            TP.response_positions(ex.student)[0],
            TP.response_positions(ex.teacher)[0],
        )

    with_text = sum(first_paired(ex.pairs["eta"], ex) for ex in examples)
    without = sum(first_paired(TP.eta_pairs(ex.student, ex.teacher, s_vocab, t_vocab), ex) for ex in examples)
    assert with_text >= 5 and without == 0


def test_same_tokenizer_gives_identity_pairs(dolly_rows, gpt2_tokenizer):
    examples = make_examples(dolly_rows[:5], gpt2_tokenizer, gpt2_tokenizer)
    eta = TP.eta_pairs_annotator(gpt2_tokenizer, gpt2_tokenizer)(examples)
    mined = TP.mined_pairs_annotator(gpt2_tokenizer, gpt2_tokenizer)(examples)
    assert eta["coverage"] == mined["coverage"] == 1.0
    for ex in examples:
        sp = TP.response_positions(ex.student)
        assert ex.pairs["eta"] == ex.pairs["mined"] == [(p, p) for p in sp]
    # what DTW and the exact alignment give on two copies of the same tokenization
    ex = examples[0]
    twin = Example(
        ex.index,
        ex.text,
        ex.prompt_chars,
        ex.references,
        ex.student,
        encode(gpt2_tokenizer, ex.text[: ex.prompt_chars], ex.text[ex.prompt_chars :]),
    )
    vocab = vocab_of(gpt2_tokenizer)
    assert TP.mined_pairs(twin.student, twin.teacher, vocab, vocab) == ex.pairs["mined"]
    assert TP.eta_pairs(twin.student, twin.teacher, vocab, vocab, text=ex.text) == ex.pairs["eta"]


def test_annotator_stats_are_counts(real_examples, gpt2_tokenizer, qwen_tokenizer):
    few = real_examples[:7]
    stats = TP.eta_pairs_annotator(gpt2_tokenizer, qwen_tokenizer, name="x")(few)
    counts = [len(ex.pairs["x"]) for ex in few]
    positions = sum(len(TP.response_positions(ex.student)) for ex in few)
    assert stats["pairs"] == sum(counts) and stats["min_pairs"] == min(counts)
    assert stats["coverage"] == round(sum(counts) / positions, 4)


def test_mined_map_plugs_into_the_annotator(tiny_pair, dolly_rows):
    bpe, uni = tiny_pair
    vmap = vocab_map(uni, bpe, "mined", workers=1)
    examples = make_examples(dolly_rows[:10], bpe, uni)
    stats = TP.mined_pairs_annotator(bpe, uni, tea2stu=vmap.t2s)(examples)
    assert stats["pairs"] > 0
    for ex in examples:
        for s, t in ex.pairs["mined"]:
            assert ex.student.input_ids[s] == int(vmap.t2s[ex.teacher.input_ids[t]])
