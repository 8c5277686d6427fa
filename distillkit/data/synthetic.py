"""Synthetic English instruction data for the offline default run.

The offline default (``python -m distillkit.run`` with no arguments) must train a tiny teacher and
distil a tiny student in a few CPU minutes, and the span methods need real English phrase structure
(spaCy noun chunks and verb phrases). So this module builds instruction rows from small word lists:
sentences such as ``"The quick engineer carefully repairs the broken bridge near the old river."``,
with determiners, adjectives, nouns, verbs in several tenses and adverbs, and ten task types whose
answers are a deterministic function of the instruction and input (learnable, never random):

===================  ==========================================================================
task                 example
===================  ==========================================================================
past_tense           rewrite a present-tense sentence in the past tense
plural_subject       make the subject of the sentence plural (the verb agrees)
noun_phrases         list the noun phrases of the sentence
main_verb            give the base form of the main verb
who_question         answer "Who ...?" about a sentence (the subject)
what_question        answer "What does ... ?" about a sentence (the object)
reverse_words        write the words of the sentence in reverse order
count_items          count and name the objects of a list
describe_object      describe an object from a fixed table (kind of thing and where it is kept)
capital_lookup       the capital of an invented country (memorised from a fixed table)
===================  ==========================================================================

Everything is drawn from ``random.Random(seed)``: no global random state, no network.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------------
# Word lists (a few hundred words in all, so the project's tiny tokenizers stay small)
# ----------------------------------------------------------------------------------------------

# People who act in the sentences: singular -> plural (a few irregular plurals on purpose).
PEOPLE: dict[str, str] = {
    "engineer": "engineers",
    "farmer": "farmers",
    "teacher": "teachers",
    "pilot": "pilots",
    "baker": "bakers",
    "doctor": "doctors",
    "painter": "painters",
    "sailor": "sailors",
    "student": "students",
    "gardener": "gardeners",
    "driver": "drivers",
    "writer": "writers",
    "singer": "singers",
    "artist": "artists",
    "builder": "builders",
    "nurse": "nurses",
    "child": "children",
    "woman": "women",
    "man": "men",
    "fisherman": "fishermen",
    "scientist": "scientists",
    "merchant": "merchants",
    "soldier": "soldiers",
    "traveler": "travelers",
}

# Things, grouped by kind; every kind is kept in one place (the fixed "facts" of describe_object).
THING_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tool": ("workshop", ("hammer", "lantern", "ladder", "rope", "shovel", "saw", "drill", "bucket")),
    "fruit": ("kitchen", ("apple", "pear", "orange", "lemon", "melon", "plum", "peach", "banana")),
    "instrument": ("music room", ("piano", "violin", "drum", "flute", "guitar", "trumpet")),
    "vehicle": ("garage", ("bicycle", "truck", "wagon", "tractor", "boat", "car")),
    "book": ("library", ("novel", "map", "letter", "journal", "poem", "report")),
    "piece of furniture": ("house", ("table", "chair", "bench", "shelf", "cabinet", "bed")),
    "building": ("town", ("bridge", "tower", "barn", "castle", "school", "market")),
}
THING_KIND: dict[str, str] = {noun: kind for kind, (_, nouns) in THING_KINDS.items() for noun in nouns}
THINGS: tuple[str, ...] = tuple(THING_KIND)

# Places for the optional prepositional phrase at the end of a sentence.
PLACES: tuple[str, ...] = (
    "river",
    "forest",
    "village",
    "harbor",
    "hill",
    "station",
    "garden",
    "lake",
    "road",
)
PREPOSITIONS: tuple[str, ...] = ("near", "behind", "beside", "across", "under")

ADJECTIVES: tuple[str, ...] = (
    "quick", "broken", "old", "young", "tall", "small", "large", "heavy", "bright", "quiet",
    "clever", "tired", "happy", "careful", "busy", "strong", "gentle", "brave", "new", "shiny",
    "red", "blue", "green", "yellow", "wooden", "golden", "dusty", "famous", "ancient", "empty",
)  # fmt: skip
ADVERBS: tuple[str, ...] = (
    "carefully", "quickly", "slowly", "quietly", "proudly", "gently", "eagerly", "calmly",
    "happily", "patiently", "bravely", "suddenly",
)  # fmt: skip


@dataclass(frozen=True)
class Verb:
    """One transitive verb in all the forms the generator needs."""

    base: str
    third: str  # present, third person singular
    past: str
    participle: str
    ing: str


def _regular(base: str, past: str | None = None, ing: str | None = None, third: str | None = None) -> Verb:
    past = past or (base + "d" if base.endswith("e") else base + "ed")
    ing = ing or (base[:-1] + "ing" if base.endswith("e") else base + "ing")
    third = third or (base + "es" if base.endswith(("sh", "ch", "s", "x")) else base + "s")
    return Verb(base, third, past, past, ing)


VERBS: tuple[Verb, ...] = (
    _regular("repair"),
    _regular("paint"),
    _regular("clean"),
    _regular("move"),
    _regular("carry", past="carried", third="carries"),
    _regular("push"),
    _regular("pull"),
    _regular("open"),
    _regular("watch"),
    _regular("visit"),
    _regular("inspect"),
    _regular("polish"),
    _regular("describe"),
    _regular("protect"),
    _regular("follow"),
    _regular("study", past="studied", third="studies"),
    Verb("build", "builds", "built", "built", "building"),
    Verb("find", "finds", "found", "found", "finding"),
    Verb("sell", "sells", "sold", "sold", "selling"),
    Verb("buy", "buys", "bought", "bought", "buying"),
    Verb("draw", "draws", "drew", "drawn", "drawing"),
    Verb("hold", "holds", "held", "held", "holding"),
    Verb("bring", "brings", "brought", "brought", "bringing"),
    Verb("take", "takes", "took", "taken", "taking"),
    Verb("see", "sees", "saw", "seen", "seeing"),
    Verb("keep", "keeps", "kept", "kept", "keeping"),
)

# Invented countries and their capitals: a fixed table, learnable only by memorisation.
CAPITALS: dict[str, str] = {
    "Veloria": "Tamsk",
    "Orbania": "Kelvar",
    "Drumland": "Pessa",
    "Calvoria": "Mireth",
    "Zentia": "Obrel",
    "Marovia": "Lundis",
    "Quessa": "Harrow",
    "Belmark": "Sivra",
    "Tornia": "Gallet",
    "Elvaria": "Rusko",
    "Norvane": "Prinna",
    "Sulmora": "Dettik",
    "Kavstan": "Ombray",
    "Lirenia": "Fossick",
    "Pardova": "Welm",
    "Ystria": "Caddon",
}
CAPITAL_QUESTIONS: tuple[str, ...] = (
    "What is the capital of {country}?",
    "Name the capital city of {country}.",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
)

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")

TASKS: tuple[str, ...] = (
    "past_tense",
    "plural_subject",
    "noun_phrases",
    "main_verb",
    "who_question",
    "what_question",
    "reverse_words",
    "count_items",
    "describe_object",
    "capital_lookup",
)

# ----------------------------------------------------------------------------------------------
# Sentence structure
# ----------------------------------------------------------------------------------------------

TENSES: tuple[str, ...] = ("present", "progressive", "perfect", "past")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class NounPhrase:
    """A determiner, an optional adjective and a noun; ``det`` is one of the/a/this/that."""

    det: str
    adj: str | None
    noun: str

    def text(self) -> str:
        words = [w for w in (self.adj, self.noun) if w]
        det = _article(words[0]) if self.det == "a" else self.det
        return " ".join([det, *words])

    def plural(self) -> str:
        """The plural of a person phrase (subjects only)."""
        det = {"the": "the", "a": "some", "this": "these", "that": "those"}[self.det]
        return " ".join(w for w in (det, self.adj, PEOPLE[self.noun]) if w)


@dataclass(frozen=True)
class Sentence:
    """``Subject [adverb] verb object [preposition place].`` in one tense."""

    subject: NounPhrase
    verb: Verb
    tense: str
    obj: NounPhrase
    adverb: str | None
    place: NounPhrase | None
    preposition: str | None

    def predicate(self, tense: str | None = None, plural: bool = False) -> str:
        """Everything after the subject, without the final period."""
        tense = tense or self.tense
        verb = self.verb
        if tense == "present":
            words = [verb.base if plural else verb.third]
        elif tense == "progressive":
            words = ["are" if plural else "is", verb.ing]
        elif tense == "perfect":
            words = ["have" if plural else "has", verb.participle]
        elif tense == "past":
            words = [verb.past]
        elif tense == "past_progressive":
            words = ["were" if plural else "was", verb.ing]
        elif tense == "past_perfect":
            words = ["had", verb.participle]
        else:
            raise ValueError(f"Unknown tense {tense!r}")
        if self.adverb:  # "is carefully repairing", "carefully repairs"
            words.insert(len(words) - 1, self.adverb)
        words.append(self.obj.text())
        if self.place is not None:
            words += [self.preposition, self.place.text()]
        return " ".join(words)

    def text(self, tense: str | None = None, plural: bool = False) -> str:
        subject = self.subject.plural() if plural else self.subject.text()
        return _capitalize(f"{subject} {self.predicate(tense, plural)}.")

    def noun_phrases(self) -> list[str]:
        phrases = [self.subject.text(), self.obj.text()]
        if self.place is not None:
            phrases.append(self.place.text())
        return phrases


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _noun_phrase(rng: random.Random, nouns: Sequence[str], p_adj: float = 0.6) -> NounPhrase:
    det = rng.choice(("the", "the", "a", "this", "that"))
    adj = rng.choice(ADJECTIVES) if rng.random() < p_adj else None
    return NounPhrase(det, adj, rng.choice(nouns))


def _sentence(rng: random.Random, tenses: Sequence[str] = TENSES) -> Sentence:
    has_place = rng.random() < 0.3
    return Sentence(
        subject=_noun_phrase(rng, tuple(PEOPLE)),
        verb=rng.choice(VERBS),
        tense=rng.choice(tenses),
        obj=NounPhrase(rng.choice(("the", "the", "a", "this", "that")), *_adj_noun(rng, THINGS)),
        adverb=rng.choice(ADVERBS) if rng.random() < 0.4 else None,
        place=NounPhrase("the", *_adj_noun(rng, PLACES, 0.4)) if has_place else None,
        preposition=rng.choice(PREPOSITIONS) if has_place else None,
    )


def _adj_noun(rng: random.Random, nouns: Sequence[str], p_adj: float = 0.6) -> tuple[str | None, str]:
    adj = rng.choice(ADJECTIVES) if rng.random() < p_adj else None
    return adj, rng.choice(nouns)


# ----------------------------------------------------------------------------------------------
# Tasks: each returns (instruction, input, output)
# ----------------------------------------------------------------------------------------------

_PAST_OF = {"present": "past", "progressive": "past_progressive", "perfect": "past_perfect"}


def _past_tense(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng, tenses=tuple(_PAST_OF))
    return "Rewrite the following sentence in the past tense.", s.text(), s.text(tense=_PAST_OF[s.tense])


def _plural_subject(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    return "Make the subject of the sentence plural.", s.text(), s.text(plural=True)


def _noun_phrases(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    return "List the noun phrases in the sentence.", s.text(), _capitalize("; ".join(s.noun_phrases())) + "."


def _main_verb(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    return (
        "What is the main verb of the sentence? Give its base form.",
        s.text(),
        f"The main verb is {s.verb.base}.",
    )


def _who_question(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    question = f"Who {s.predicate()}?"
    return (
        "Answer the question about the sentence.",
        f"Sentence: {s.text()}\nQuestion: {question}",
        _capitalize(f"{s.subject.text()} {s.predicate()}."),
    )


def _what_question(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    subject, verb = s.subject.text(), s.verb
    adverb = f"{s.adverb} " if s.adverb else ""
    question = {
        "present": f"What does {subject} {adverb}{verb.base}?",
        "past": f"What did {subject} {adverb}{verb.base}?",
        "progressive": f"What is {subject} {adverb}{verb.ing}?",
        "perfect": f"What has {subject} {adverb}{verb.participle}?",
    }[s.tense]
    return (
        "Answer the question about the sentence.",
        f"Sentence: {s.text()}\nQuestion: {question}",
        f"The answer is {s.obj.text()}.",
    )


def _reverse_words(rng: random.Random) -> tuple[str, str, str]:
    s = _sentence(rng)
    words = s.text().rstrip(".").split()
    return "Write the words of the sentence in reverse order.", s.text(), " ".join(reversed(words))


def _count_items(rng: random.Random) -> tuple[str, str, str]:
    k = rng.randint(2, 5)
    items = [NounPhrase("a", *_adj_noun(rng, THINGS, 0.8)).text() for _ in range(k)]
    listing = ", ".join(items[:-1]) + " and " + items[-1]
    return (
        "Count the objects in the list and name them.",
        _capitalize(listing) + ".",
        f"There are {NUMBER_WORDS[k]} objects: {listing}.",
    )


def _describe_object(rng: random.Random) -> tuple[str, str, str]:
    adj, noun = _adj_noun(rng, THINGS, 0.7)
    phrase = NounPhrase("the", adj, noun).text()
    kind = THING_KIND[noun]
    place = THING_KINDS[kind][0]
    return (
        f"Describe {phrase} in one sentence.",
        "",
        f"{_capitalize(phrase)} is {_article(kind)} {kind} that people keep in the {place}.",
    )


def _capital_lookup(rng: random.Random) -> tuple[str, str, str]:
    country = rng.choice(tuple(CAPITALS))
    return (
        rng.choice(CAPITAL_QUESTIONS).format(country=country),
        "",
        f"The capital of {country} is {CAPITALS[country]}.",
    )


_TASK_FNS = {
    "past_tense": _past_tense,
    "plural_subject": _plural_subject,
    "noun_phrases": _noun_phrases,
    "main_verb": _main_verb,
    "who_question": _who_question,
    "what_question": _what_question,
    "reverse_words": _reverse_words,
    "count_items": _count_items,
    "describe_object": _describe_object,
    "capital_lookup": _capital_lookup,
}
assert tuple(_TASK_FNS) == TASKS


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_tasks(tasks: Sequence[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return TASKS
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in _TASK_FNS]
    if bad or not tasks:
        raise ValueError(f"Unknown synthetic task(s) {bad or tasks!r}; valid: {', '.join(TASKS)}")
    return tasks


def _row(rng: random.Random, task: str) -> dict[str, str]:
    instruction, inp, output = _TASK_FNS[task](rng)
    return {"instruction": instruction, "input": inp, "output": output, "task": task}


def generate_synthetic(n: int, seed: int = 0, tasks: Sequence[str] | None = None) -> list[dict[str, str]]:
    """``n`` synthetic instruction rows ``{instruction, input, output, task}`` (``input`` may be "").

    Tasks take turns (so every task appears once ``n >= len(tasks)``), then the rows are shuffled.
    Deterministic for a ``seed``; rows may repeat (use :func:`synthetic_splits` for disjoint splits).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    tasks = _check_tasks(tasks)
    rng = random.Random(seed)
    rows = [_row(rng, tasks[i % len(tasks)]) for i in range(n)]
    rng.shuffle(rows)
    return rows


def synthetic_splits(
    n_train: int, n_dev: int, n_test: int, seed: int = 0, tasks: Sequence[str] | None = None
) -> dict[str, list[dict[str, str]]]:
    """Disjoint ``{"train", "dev", "test"}`` splits: no instruction+input appears twice anywhere.

    Rows are drawn task by task in turn, keeping the first occurrence of each instruction+input,
    until ``n_train + n_dev + n_test`` distinct rows exist; they are shuffled and cut in three.
    Tasks with few distinct prompts (``capital_lookup``: 64 prompts) are capped by their supply.
    """
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    if any(v < 0 for v in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    tasks = _check_tasks(tasks)
    total = n_train + n_dev + n_test
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    rows: list[dict[str, str]] = []
    attempts, max_attempts = 0, 50 * total + 1000
    while len(rows) < total:
        if attempts >= max_attempts:
            raise ValueError(
                f"Could only draw {len(rows)} distinct synthetic rows of {total} requested for tasks {tasks}; "
                "ask for fewer rows or more tasks."
            )
        row = _row(rng, tasks[attempts % len(tasks)])
        attempts += 1
        key = (row["instruction"], row["input"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    rng.shuffle(rows)
    return {"train": rows[:n_train], "dev": rows[n_train : n_train + n_dev], "test": rows[n_train + n_dev :]}


def corpus_texts(rows: Iterable[dict]) -> list[str]:
    """The non-empty instruction, input and output texts of ``rows`` (tokenizer training corpus)."""
    texts = []
    for row in rows:
        for key in ("instruction", "input", "output"):
            value = row.get(key)
            if isinstance(value, list):
                texts.extend(str(v) for v in value if v)
            elif value:
                texts.append(str(value))
    return texts
