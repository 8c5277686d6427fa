"""Char-span -> token membership and batched collation, checked against brute-force references."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distillkit.spans.membership import (
    MembershipStats,
    collate_membership,
    drop_uncovered,
    shift_spans,
    spans_in_region,
    token_membership,
    uncovered,
)
from distillkit.types import CharSpan


def brute_membership(spans, offsets, valid, rule):
    """The rule of papers.md §2.1 written out as nested loops."""
    out = []
    for s in spans:
        members = []
        for t, ((a, b), ok) in enumerate(zip(offsets, valid)):
            if not ok or a == b:
                continue
            first = a + 1 >= s.start if rule == "reference" else a >= s.start
            if first and b <= s.end:
                members.append(t)
        out.append(members)
    return out


def regex_word_spans(text):
    return [CharSpan(m.start(), m.end(), "word") for m in re.finditer(r"\w+|[^\w\s]", text)]


offset_lists = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 6)).map(lambda p: (p[0], p[0] + p[1])), max_size=25
)
span_lists = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 10)).map(lambda p: CharSpan(p[0], p[0] + p[1], "np")),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(offsets=offset_lists, spans=span_lists, data=st.data(), rule=st.sampled_from(["reference", "exact"]))
def test_membership_matches_brute_force_on_arbitrary_offsets(offsets, spans, data, rule):
    valid = data.draw(st.lists(st.booleans(), min_size=len(offsets), max_size=len(offsets)))
    got = token_membership(spans, offsets, valid, rule=rule)
    assert got == brute_membership(spans, offsets, valid, rule)


@pytest.mark.parametrize("rule", ["reference", "exact"])
def test_membership_on_real_tokenizers(gpt2_tokenizer, qwen_tokenizer, rule):
    text = "The café's owner  bought 12345 apples 🍎🍎, then\n\nsaid: «中文 works?»  Yes!"
    spans = regex_word_spans(text) + [CharSpan(4, 17, "np"), CharSpan(18, 37, "vp")]
    for tok in (gpt2_tokenizer, qwen_tokenizer):
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        valid = [True] * len(offsets)
        assert token_membership(spans, offsets, valid, rule=rule) == brute_membership(
            spans, offsets, valid, rule
        )


def test_reference_rule_admits_leading_space_token_but_exact_does_not(gpt2_tokenizer):
    text = "big dog"
    enc = gpt2_tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]  # "big" (0,3), "Ġdog" (3,7)
    dog = CharSpan(4, 7, "word")
    assert token_membership([dog], offsets, rule="reference") == [[1]]
    assert token_membership([dog], offsets, rule="exact") == [[]]


def test_invalid_and_empty_tokens_never_belong():
    offsets = [(0, 0), (0, 3), (3, 3), (3, 6), (0, 0)]
    valid = [False, True, True, False, False]
    assert token_membership([CharSpan(0, 6, "np")], offsets, valid) == [[1]]


def test_uncovered_spans_are_reported_not_crashed():
    stats = MembershipStats()
    offsets = [(0, 3), (3, 7)]
    spans = [CharSpan(0, 3, "word"), CharSpan(10, 12, "word"), CharSpan(3, 7, "word")]
    members = token_membership(spans, offsets, stats=stats)
    assert members == [[0], [], [1]]
    assert uncovered(members) == [1]
    token_membership([], offsets, stats=stats)
    token_membership([CharSpan(20, 25, "np")], offsets, stats=stats)
    assert stats.as_dict() == {"texts": 3, "spans": 4, "uncovered_spans": 2, "texts_without_spans": 2}
    assert [span for _, span in stats.uncovered_examples] == [
        CharSpan(10, 12, "word"),
        CharSpan(20, 25, "np"),
    ]


def test_bad_rule_and_shapes_fail_clearly():
    with pytest.raises(ValueError, match="exact.*reference|reference.*exact"):
        token_membership([], [(0, 1)], rule="fuzzy")
    with pytest.raises(ValueError, match="valid must have shape"):
        token_membership([], [(0, 1)], [True, False])


def test_membership_accepts_tensors():
    offsets = torch.tensor([[0, 3], [3, 7], [0, 0]])
    valid = torch.tensor([1, 1, 0])
    assert token_membership([CharSpan(0, 7, "np")], offsets, valid) == [[0, 1]]


def test_drop_uncovered_keeps_the_same_grid_on_both_sides():
    a = [[0], [], [2, 3], [4]]
    b = [[0, 1], [2], [], [5]]
    assert drop_uncovered(a, b) == ([[0], [4]], [[0, 1], [5]])
    with pytest.raises(ValueError, match="same spans"):
        drop_uncovered([[0]], [])


def test_region_and_shift_helpers():
    spans = [CharSpan(0, 4, "np"), CharSpan(5, 9, "vp"), CharSpan(8, 12, "np")]
    assert spans_in_region(spans, 5, 10) == [CharSpan(5, 9, "vp")]
    assert shift_spans(spans[:1], 3) == [CharSpan(3, 7, "np")]
    with pytest.raises(ValueError, match="region_end"):
        spans_in_region(spans, 5, 2)


batches = st.lists(
    st.lists(st.lists(st.integers(0, 9), max_size=4, unique=True).map(sorted), max_size=5),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(per_example=batches, data=st.data())
def test_collate_matches_brute_force(per_example, data):
    L = 16
    pad_left = data.draw(
        st.none() | st.lists(st.integers(0, 6), min_size=len(per_example), max_size=len(per_example))
    )
    m = collate_membership(per_example, seq_len=L, pad_left=pad_left)
    B = len(per_example)
    S = max([len(ex) for ex in per_example] + [1])
    assert m.seq_len == L and m.span_mask.shape == (B, S) and m.num_spans == S
    assert m.token_index.dtype == torch.long and m.span_index.dtype == torch.long

    expected = set()
    mask = np.zeros((B, S), dtype=bool)
    for b, ex in enumerate(per_example):
        shift = 0 if pad_left is None else pad_left[b]
        for s, toks in enumerate(ex):
            mask[b, s] = len(toks) > 0
            expected |= {(b, s, t + shift) for t in toks}
    got = list(zip(m.token_index.tolist(), m.span_index.tolist()))
    decoded = {(tok // L, span % S, tok % L) for tok, span in got}
    assert len(got) == len(decoded) == len(expected)
    assert all(tok // L == span // S for tok, span in got)  # a token pairs with spans of its own example
    assert decoded == expected
    assert np.array_equal(m.span_mask.numpy(), mask)


def test_collate_all_empty_has_one_masked_column_and_no_pairs():
    m = collate_membership([[], [[]]], seq_len=4)
    assert m.span_mask.shape == (2, 1) and not m.span_mask.any()
    assert m.token_index.numel() == 0 and m.span_index.numel() == 0


def test_collate_rejects_out_of_range_tokens():
    with pytest.raises(ValueError, match="outside the sequence length 4"):
        collate_membership([[[1, 3]]], seq_len=4, pad_left=[1])
    with pytest.raises(ValueError, match="pad_left"):
        collate_membership([[[1]]], seq_len=4, pad_left=[0, 1])


def test_membership_on_vicuna_matches_brute_force(data_root, gpt2_tokenizer, qwen_tokenizer):
    """Every vicuna row (prompt + output): word spans and random multi-word spans, both rules, both tokenizers."""
    import random

    from distillkit.utils.io import read_jsonl

    rng = random.Random(0)
    stats = MembershipStats()
    for row in read_jsonl(data_root / "vicuna" / "valid.jsonl"):
        text = row["prompt"] + row["output"]
        words = regex_word_spans(text)
        spans = rng.sample(words, min(15, len(words)))
        for _ in range(10):
            i = rng.randrange(len(words))
            j = min(len(words) - 1, i + rng.randrange(1, 6))
            spans.append(CharSpan(words[i].start, words[j].end, "np"))
        for tok in (gpt2_tokenizer, qwen_tokenizer):
            enc = tok(text, return_offsets_mapping=True)
            offsets = [tuple(o) for o in enc["offset_mapping"]]
            valid = [True] * len(offsets)
            for rule in ("reference", "exact"):
                got = token_membership(spans, offsets, valid, rule=rule, stats=stats)
                assert got == brute_membership(spans, offsets, valid, rule)
    assert stats.texts == 80 * 4 and stats.spans == 80 * 4 * 25


def test_span_one_tokenizer_cannot_cover_is_reported_and_dropped(gpt2_tokenizer, qwen_tokenizer):
    """A span cutting through a token of one side only: reported uncovered there, dropped from both grids."""
    text = "Totally 中文 text"
    sides = {}
    for name, tok in (("gpt2", gpt2_tokenizer), ("qwen", qwen_tokenizer)):
        sides[name] = [tuple(o) for o in tok(text, return_offsets_mapping=True)["offset_mapping"]]
    # GPT-2 has "Ġ" (7, 8) + "ä¸Ń" (8, 9); Qwen keeps " 中" as one token "Ġä¸Ń" (7, 9): under the
    # exact rule the one-character span "中" (8, 9) is covered on GPT-2 but not on Qwen.
    spans = [CharSpan(0, 7, "word"), CharSpan(8, 9, "word"), CharSpan(10, 15, "word")]
    stats = {name: MembershipStats() for name in sides}
    members = {
        name: token_membership(spans, offsets, rule="exact", stats=stats[name])
        for name, offsets in sides.items()
    }
    assert members["gpt2"] == brute_membership(spans, sides["gpt2"], [True] * len(sides["gpt2"]), "exact")
    assert members["qwen"][1] == [] and members["gpt2"][1] != []
    assert stats["qwen"].uncovered_spans == 1 and stats["gpt2"].uncovered_spans == 0
    kept_gpt2, kept_qwen = drop_uncovered(members["gpt2"], members["qwen"])
    assert kept_gpt2 == [members["gpt2"][0], members["gpt2"][2]]
    assert kept_qwen == [members["qwen"][0], members["qwen"][2]]
