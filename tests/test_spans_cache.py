"""The span cache: parse once, only misses, atomic shared shards, reports."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest

from distillkit.spans.cache import SpanCache, parse_stats
from distillkit.spans.parsers import SpacySpanParser, SpanParser, WordSpanParser
from distillkit.types import CharSpan


class Counting(SpanParser):
    """Wraps a parser and records every ``parse`` call and the texts it was given."""

    def __init__(self, inner: SpanParser, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay
        self.name = inner.name
        self.calls: list[list[str]] = []

    def settings(self):
        return self.inner.settings()

    def version(self):
        return self.inner.version()

    def parse(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay)
        return self.inner.parse(texts)


TEXTS = [f"Text number {i}: the cat sat on mat {i % 7}." for i in range(40)]


def test_second_pass_is_all_hits(tmp_path):
    parser = Counting(WordSpanParser())
    cache = SpanCache(tmp_path)
    first = cache.get_or_parse(parser, TEXTS)
    assert len(parser.calls) == 1 and sorted(parser.calls[0]) == sorted(TEXTS)
    assert (cache.last_stats.hits, cache.last_stats.misses) == (0, 40)
    assert first == WordSpanParser().parse(TEXTS)

    again = SpanCache(tmp_path).get_or_parse(parser, TEXTS)  # a fresh process would see the same
    assert len(parser.calls) == 1 and again == first


def test_only_misses_are_parsed_in_one_call_and_order_is_kept(tmp_path):
    parser = Counting(WordSpanParser())
    cache = SpanCache(tmp_path)
    cache.get_or_parse(parser, TEXTS[:20])
    new = [f"A brand new sentence {i}." for i in range(20)]
    mixed = [t for pair in zip(TEXTS[:20], new) for t in pair]  # interleaved old/new
    got = cache.get_or_parse(parser, mixed)
    assert len(parser.calls) == 2 and sorted(parser.calls[1]) == sorted(new)
    assert (cache.last_stats.hits, cache.last_stats.misses, cache.last_stats.parse_calls) == (20, 20, 1)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.parse_calls) == (20, 40, 2)
    assert got == WordSpanParser().parse(mixed)


def test_duplicates_are_parsed_once(tmp_path):
    parser = Counting(WordSpanParser())
    got = SpanCache(tmp_path).get_or_parse(parser, ["same text", "other", "same text"])
    assert parser.calls == [["same text", "other"]]
    assert got[0] == got[2] != got[1]


def test_settings_change_the_key(tmp_path):
    cache = SpanCache(tmp_path)
    phrase = Counting(SpacySpanParser(word_units="phrase_words"))
    every = Counting(SpacySpanParser(word_units="all_words"))
    texts = ["The dog barked loudly at the mailman."]
    a = cache.get_or_parse(phrase, texts)
    b = cache.get_or_parse(every, texts)
    assert len(phrase.calls) == len(every.calls) == 1
    assert cache.shard_path(phrase.inner) != cache.shard_path(every.inner)
    assert a != b
    cache.get_or_parse(phrase, texts)
    assert len(phrase.calls) == 1


def test_default_root_is_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    assert SpanCache().root == tmp_path / "spans"


def _fill(root: str, texts: list[str]) -> None:
    SpanCache(root).get_or_parse(Counting(WordSpanParser(), delay=0.5), texts)


def test_parallel_jobs_share_a_shard_without_losing_entries(tmp_path):
    """Two processes read the (empty) shard, parse slowly, then write: both sets of entries survive."""
    ctx = mp.get_context("fork")
    jobs = [ctx.Process(target=_fill, args=(str(tmp_path), TEXTS[i::2])) for i in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
        assert job.exitcode == 0
    parser = Counting(WordSpanParser())
    cache = SpanCache(tmp_path)
    assert cache.get_or_parse(parser, TEXTS) == WordSpanParser().parse(TEXTS)
    assert parser.calls == []
    shard = json.loads(cache.shard_path(parser).read_text())
    assert len(shard) == len(TEXTS)
    assert not list(tmp_path.glob("*.tmp"))


def test_report_counts_empty_and_phrase_less_texts(tmp_path):
    cache = SpanCache(tmp_path)
    texts = ["", "  \n", "Yes!", "The cat sleeps.", "1234"]
    spans = cache.get_or_parse(SpacySpanParser(), texts)
    report = cache.last_report.as_dict()
    assert report["texts"] == 5 and report["empty_texts"] == 2
    expected_without = sum(1 for s in spans if not any(x.kind in ("np", "vp") for x in s))
    assert report["without_phrases"] == expected_without >= 4
    assert report["spans_by_kind"]["np"] == sum(x.kind == "np" for s in spans for x in s) >= 1


def test_parse_stats_by_hand():
    spans = [[], [CharSpan(0, 2, "word")], [CharSpan(0, 3, "np"), CharSpan(0, 1, "word")]]
    report = parse_stats(["", "ab", "abc"], spans)
    assert report.as_dict() == {
        "texts": 3,
        "empty_texts": 1,
        "without_spans": 1,
        "without_phrases": 2,
        "spans_by_kind": {"word": 2, "np": 1},
    }
    with pytest.raises(ValueError, match="2 texts but 3"):
        parse_stats(["a", "b"], spans)


class Fixed(SpanParser):
    """Returns the same given spans for every text."""

    name = "fixed"

    def __init__(self, spans):
        self.spans = spans

    def settings(self):
        return {"spans": [[s.start, s.end, s.kind] for s in self.spans]}

    def version(self):
        return "1"

    def parse(self, texts):
        return [list(self.spans) for _ in texts]


def test_every_span_kind_round_trips_and_unknown_kinds_fail(tmp_path):
    spans = [CharSpan(0, 3, "np"), CharSpan(0, 3, "vp"), CharSpan(4, 9, "word"), CharSpan(2, 5, "aligned")]
    SpanCache(tmp_path).get_or_parse(Fixed(spans), ["a text"])
    assert SpanCache(tmp_path).get_or_parse(Fixed(spans), ["a text"]) == [spans]
    with pytest.raises(ValueError, match=r"\['pp'\].*word, np, vp, aligned"):
        SpanCache(tmp_path).get_or_parse(Fixed([CharSpan(0, 1, "pp")]), ["x"])
