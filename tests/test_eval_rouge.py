"""ROUGE-L against values worked out by hand and a brute-force LCS written here."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillkit.eval.rouge import rouge_l


def f1(lcs: int, n_pred: int, n_ref: int) -> float:
    p, r = lcs / n_pred, lcs / n_ref
    return 0.0 if lcs == 0 else 100 * 2 * p * r / (p + r)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Textbook dynamic programme, independent of rouge_score."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_hand_computed_pair_without_stemming_effects():
    # pred: the cat sat on the mat (6) / ref: the cat is on the mat (6); LCS = the cat on the mat = 5
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(100 * 5 / 6)


def test_stemming_matches_inflections():
    # Porter stems: he|run|quickli vs he|wa|run|quick -> LCS = he run = 2; P = 2/3, R = 2/4
    expected = 100 * 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)
    assert expected == pytest.approx(100 * 4 / 7)
    assert rouge_l("he runs quickly", "he was running quick") == pytest.approx(expected)
    # without the stemmer only "he" would match: 2PR/(P+R) with P = 1/3, R = 1/4
    assert rouge_l("he runs quickly", "he was running quick") != pytest.approx(f1(1, 3, 4))


def test_case_and_punctuation_are_ignored():
    # tokens: [paris, france] vs [paris] -> P = 1/2, R = 1, F = 2/3
    assert rouge_l("Paris, France!", "paris") == pytest.approx(100 * 2 / 3)


def test_empty_prediction_scores_zero():
    assert rouge_l("", "some reference") == 0.0
    assert rouge_l("   ", ["a", "b"]) == 0.0


def test_multi_reference_takes_the_max():
    pred = "the cat sat on the mat"
    refs = ["a dog", "the cat is on the mat", "cat"]
    singles = [rouge_l(pred, r) for r in refs]
    assert singles[1] == pytest.approx(100 * 5 / 6)
    assert rouge_l(pred, refs) == pytest.approx(max(singles))
    assert rouge_l(pred, refs[1]) == rouge_l(pred, [refs[1]])


def test_no_reference_is_an_error():
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("x", [])


# Single letters are their own Porter stems and survive rouge_score's tokenizer unchanged.
words = st.lists(st.sampled_from(list("abcdefg")), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(pred=words, ref=words)
def test_matches_brute_force_lcs_f1(pred, ref):
    expected = f1(lcs_length(pred, ref), len(pred), len(ref))
    assert math.isclose(rouge_l(" ".join(pred), " ".join(ref)), expected, rel_tol=1e-9, abs_tol=1e-9)
