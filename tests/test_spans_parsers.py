"""Span parsers: spaCy on hand-checked sentences, stanza tree -> spans on bracketed trees, regex words."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from stanza.models.constituency.tree_reader import read_trees

from distillkit.spans.parsers import (
    PARSERS,
    SpacySpanParser,
    StanzaSpanParser,
    WordSpanParser,
    build_parser,
    filter_overlapping_spans,
    phrase_word_spans,
    spans_from_tree,
)
from distillkit.types import CharSpan


def at(text: str, piece: str, kind: str, nth: int = 0) -> CharSpan:
    """The span of the nth occurrence of ``piece`` in ``text`` (expected values written by hand)."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(piece, start + 1)
    return CharSpan(start, start + len(piece), kind)


@pytest.fixture(scope="module")
def spacy_parser():
    return SpacySpanParser()


def test_spacy_phrases_and_phrase_words_quirk(spacy_parser):
    t1 = "The quick brown fox has quickly jumped over the lazy dog."
    t2 = "She has been writing long letters."
    t3 = "The old man quickly sold his car."
    got = spacy_parser.parse([t1, t2, t3])
    assert got[0] == [
        at(t1, "The quick brown fox", "np"),
        at(t1, "has quickly jumped", "vp"),  # the longest Matcher match; its sub-matches are filtered
        at(t1, "the lazy dog", "np"),
        # words of kept phrases only ("over" and "." are in no phrase), each with its trailing space
        at(t1, "The ", "word"),
        at(t1, "quick ", "word"),
        at(t1, "brown ", "word"),
        at(t1, "fox", "word"),
        at(t1, "has ", "word"),
        at(t1, "quickly ", "word"),
        at(t1, "jumped", "word"),
        at(t1, "the ", "word"),
        at(t1, "lazy ", "word"),
        at(t1, "dog", "word"),
    ]
    assert [s for s in got[1] if s.kind != "word"] == [
        at(t2, "She", "np"),
        at(t2, "has been writing", "vp"),
        at(t2, "long letters", "np"),
    ]
    assert [s for s in got[2] if s.kind != "word"] == [
        at(t3, "The old man", "np"),
        at(t3, "quickly sold", "vp"),
        at(t3, "his car", "np"),
    ]


def test_spacy_all_words(spacy_parser):
    text = "Cats  sleep.\nDogs bark."
    parser = SpacySpanParser(word_units="all_words")
    words = [s for s in parser.parse([text])[0] if s.kind == "word"]
    assert [text[s.start : s.end] for s in words] == ["Cats", "sleep", ".", "Dogs", "bark", "."]
    assert parser.settings() != spacy_parser.settings()  # different cache keys


def test_spacy_texts_without_phrases_do_not_crash(spacy_parser):
    assert spacy_parser.parse(["", "   ", "Yes!", "1234 5678"]) == [[], [], [], []]
    assert spacy_parser.parse([]) == []


def test_spacy_settings_are_validated_and_missing_models_explained():
    with pytest.raises(ValueError, match="word_units.*'sentence'.*phrase_words, all_words"):
        SpacySpanParser(word_units="sentence")
    with pytest.raises(RuntimeError, match="python -m spacy download en_core_web_sm"):
        SpacySpanParser(model="xx_no_such_model", fallback=None)


def test_filter_overlapping_spans_drops_contained_keeps_partial():
    spans = [
        CharSpan(5, 9, "vp"),
        CharSpan(0, 10, "np"),
        CharSpan(2, 4, "np"),  # inside (0, 10)
        CharSpan(8, 14, "vp"),  # partial overlap: kept
        CharSpan(10, 14, "np"),  # inside (8, 14)
        CharSpan(0, 10, "vp"),  # same interval as the first np: the one listed first wins
    ]
    assert filter_overlapping_spans(spans) == [CharSpan(0, 10, "np"), CharSpan(8, 14, "vp")]


def test_phrase_word_spans_rule():
    words = [(0, 3), (4, 9), (10, 12), (13, 17)]
    got = phrase_word_spans([(0, 3), (2, 4)], words)
    # phrase 0..3: (0,4) (4,10) (10,12); phrase 2..4: (10,13) (13,17)
    assert got == [
        CharSpan(0, 4, "word"),
        CharSpan(4, 10, "word"),
        CharSpan(10, 13, "word"),
        CharSpan(10, 12, "word"),
        CharSpan(13, 17, "word"),
    ]


def test_phrase_word_spans_duplicates_kept_by_default_as_the_reference():
    """Two partially overlapping phrases sharing two words: the shared first word's unit is produced
    by both; the reference (a list, never de-duplicated) keeps both copies."""
    words = [(0, 3), (4, 9), (10, 12), (13, 17)]
    # phrase 0..3 gives (0,4) (4,10) (10,12); phrase 1..4 gives (4,10) (10,13) (13,17)
    reference = [(0, 4), (4, 10), (10, 12), (4, 10), (10, 13), (13, 17)]
    got = phrase_word_spans([(0, 3), (1, 4)], words)
    assert sorted((w.start, w.end) for w in got) == sorted(reference)
    assert [(w.start, w.end) for w in got].count((4, 10)) == 2
    once = phrase_word_spans([(0, 3), (1, 4)], words, duplicate_words="drop")
    assert sorted((w.start, w.end) for w in once) == sorted(set(reference))
    with pytest.raises(ValueError, match="duplicate_words 'twice'; valid: keep, drop"):
        phrase_word_spans([(0, 3)], words, duplicate_words="twice")


def leaf_spans(text: str, leaves: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for leaf in leaves:
        start = text.index(leaf, pos)
        spans.append((start, start + len(leaf)))
        pos = start + len(leaf)
    return spans


def tree_spans(bracketed: str, text: str, labels=("NP", "VP")):
    tree = read_trees(bracketed)[0]
    return [span for span, _ in spans_from_tree(tree, leaf_spans(text, tree.leaf_labels()), labels)]


def test_spans_from_tree_nested_nps():
    text = "The owner of the shop left."
    tree = (
        "(ROOT (S (NP (NP (DT The) (NN owner)) (PP (IN of) (NP (DT the) (NN shop)))) (VP (VBD left)) (. .)))"
    )
    got = tree_spans(tree, text)
    assert got == [
        at(text, "The owner of the shop", "np"),
        at(text, "The owner", "np"),
        at(text, "the shop", "np"),
        at(text, "left", "vp"),
    ]
    assert filter_overlapping_spans(got) == [at(text, "The owner of the shop", "np"), at(text, "left", "vp")]
    assert tree_spans(tree, text, labels=("VP",)) == [at(text, "left", "vp")]


def test_spans_from_tree_vp_inside_vp_and_leaf_ranges():
    text = "She will  read a book."
    tree = read_trees("(ROOT (S (NP (PRP She)) (VP (MD will) (VP (VB read) (NP (DT a) (NN book)))) (. .)))")[
        0
    ]
    got = spans_from_tree(tree, leaf_spans(text, tree.leaf_labels()), ("NP", "VP"))
    assert got == [
        (at(text, "She", "np"), (0, 1)),
        (at(text, "will  read a book", "vp"), (1, 5)),
        (at(text, "read a book", "vp"), (2, 5)),
        (at(text, "a book", "np"), (3, 5)),
    ]


def test_spans_from_tree_punctuation_leaves():
    text = "Bob, Ann (and Eve) came!"
    tree = (
        "(ROOT (S (NP (NNP Bob) (, ,) (NNP Ann) (-LRB- -LRB-) (CC and) (NNP Eve) (-RRB- -RRB-)) "
        "(VP (VBD came)) (. !)))"
    )
    tree_obj = read_trees(tree)[0]
    leaves = leaf_spans(text, ["Bob", ",", "Ann", "(", "and", "Eve", ")", "came", "!"])
    got = [span for span, _ in spans_from_tree(tree_obj, leaves, ("NP", "VP"))]
    assert got == [at(text, "Bob, Ann (and Eve)", "np"), at(text, "came", "vp")]
    with pytest.raises(ValueError, match="leaves"):
        spans_from_tree(tree_obj, leaves[:-1], ("NP",))


def fake_stanza_parser(word_units="phrase_words", keep_nested=False) -> StanzaSpanParser:
    """A StanzaSpanParser whose pipeline is replaced by a stand-in returning pre-parsed documents."""
    text = "Dogs bark. The old cat sleeps."
    trees = [
        "(ROOT (S (NP (NNS Dogs)) (VP (VBP bark)) (. .)))",
        "(ROOT (S (NP (DT The) (JJ old) (NN cat)) (VP (VBZ sleeps)) (. .)))",
    ]
    sentences = []
    pos = 0
    for bracketed in trees:
        tree = read_trees(bracketed)[0]
        words = []
        for leaf in tree.leaf_labels():
            start = text.index(leaf, pos)
            pos = start + len(leaf)
            words.append(SimpleNamespace(start_char=start, end_char=pos))
        tokens = [SimpleNamespace(start_char=w.start_char, end_char=w.end_char, words=[w]) for w in words]
        sentences.append(SimpleNamespace(tokens=tokens, constituency=tree))
    parser = object.__new__(StanzaSpanParser)
    parser.lang, parser.phrase_labels, parser.model_dir = "en", ("NP", "VP"), None
    parser.word_units, parser.use_gpu, parser.keep_nested = word_units, False, keep_nested
    parser.duplicate_words = "keep"
    parser._nlp = SimpleNamespace(
        bulk_process=lambda docs: [SimpleNamespace(sentences=sentences) for _ in docs]
    )
    return parser, text


def test_stanza_parse_across_sentences_with_a_stand_in_pipeline():
    parser, text = fake_stanza_parser()
    got = parser.parse([text, ""])
    assert got[1] == []
    assert [(s.kind, text[s.start : s.end]) for s in got[0]] == [
        ("np", "Dogs"),
        ("vp", "bark"),
        ("np", "The old cat"),
        ("vp", "sleeps"),
        ("word", "Dogs"),
        ("word", "bark"),
        ("word", "The "),
        ("word", "old "),
        ("word", "cat"),
        ("word", "sleeps"),
    ]
    parser, text = fake_stanza_parser(word_units="all_words")
    words = [text[s.start : s.end] for s in parser.parse([text])[0] if s.kind == "word"]
    assert words == ["Dogs", "bark", ".", "The", "old", "cat", "sleeps", "."]


def test_stanza_without_models_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError, match=r"stanza.download\('en'.*span_parser.model_dir"):
        StanzaSpanParser(model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="phrase label 'PP'.*NP, VP"):
        StanzaSpanParser(model_dir=str(tmp_path), phrase_labels=("NP", "PP"))


def test_word_parser_matches_regex_and_validates():
    text = "Hi,  it's 42°C — naïve 中文!"
    spans = WordSpanParser().parse([text])[0]
    assert [text[s.start : s.end] for s in spans] == re.findall(r"\w+|[^\w\s]", text)
    assert all(s.kind == "word" for s in spans)
    with pytest.raises(ValueError, match="all_words"):
        WordSpanParser(word_units="phrase_words")


def test_build_parser_and_configs():
    assert isinstance(build_parser("words"), WordSpanParser)
    with pytest.raises(ValueError, match="span parser 'benepar'.*spacy, stanza, words"):
        build_parser("benepar")

    import os

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = os.path.join(os.path.dirname(__file__), "..", "conf", "span_parser")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        for name in PARSERS:
            cfg = compose(config_name=name)
            assert cfg._target_ == f"distillkit.spans.parsers.{PARSERS[name].__name__}"
            if name != "stanza":  # no stanza models here
                assert isinstance(instantiate(cfg), PARSERS[name])


def _reference_spans_and_words(doc) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The reference ``get_spans_offsets`` + ``filter_overlapping_spans`` (voluyen/mta@91dfd377
    distillm/span_utils.py), rewritten here from its description: verb phrases then noun chunks, a
    stable sort by (start, -end), a span dropped when it ends inside the last kept one, and each kept
    phrase's word units appended to a plain list."""
    from spacy.matcher import Matcher

    from distillkit.spans.parsers import VERB_PHRASE_PATTERN

    matcher = Matcher(doc.vocab)
    matcher.add("VP", [VERB_PHRASE_PATTERN])
    candidates = [(doc[a:b].start_char, doc[a:b].end_char, doc[a:b]) for _, a, b in matcher(doc)]
    candidates += [(nc.start_char, nc.end_char, nc) for nc in doc.noun_chunks]
    kept: list = []
    for cand in sorted(candidates, key=lambda c: (c[0], -c[1])):
        if kept and cand[1] <= kept[-1][1]:
            continue
        kept.append(cand)
    words: list[tuple[int, int]] = []
    for _, _, p in kept:
        words += [(p[i - 1].idx, p[i].idx) for i in range(1, len(p))]
        words.append((p[len(p) - 1].idx, p[len(p) - 1].idx + len(p[len(p) - 1])))
    return [(a, b) for a, b, _ in kept], words


def test_spacy_units_on_dolly_match_the_reference_duplicates_included(spacy_parser, data_root):
    import json

    rows = [json.loads(line) for line in (data_root / "dolly" / "dev.jsonl").open()][:20]
    texts = [r["prompt"] + r["output"] for r in rows]
    ours = spacy_parser.parse(texts)
    spacy_parser._load()
    with_duplicates = 0
    for text, spans in zip(texts, ours):
        ref_phrases, ref_words = _reference_spans_and_words(spacy_parser._nlp(text))
        phrases = [(s.start, s.end) for s in spans if s.kind != "word"]
        words = [(s.start, s.end) for s in spans if s.kind == "word"]
        assert phrases == ref_phrases
        assert sorted(words) == sorted(w for w in ref_words if w[1] > w[0])  # a multiset: copies count
        with_duplicates += len(words) != len(set(words))
    assert with_duplicates >= 1  # the case the reference keeps and the old default removed
    dropped = SpacySpanParser(duplicate_words="drop").parse(texts)
    assert all(
        len(w := [(s.start, s.end) for s in spans if s.kind == "word"]) == len(set(w)) for spans in dropped
    )
    assert sum(map(len, dropped)) < sum(map(len, ours))
