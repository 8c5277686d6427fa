"""The project's tiny tokenizers: train, save, reload, offsets, BOS behaviour, cache.

Token surfaces are recovered here from the raw token strings by code written in this test (the
GPT-2 byte-to-unicode table, ``▁`` and ``<0xNN>`` pieces), independently of the tokenizers' decoders.
"""

from __future__ import annotations

import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

import distillkit.models.tokenizers as tokmod
from distillkit.data.synthetic import corpus_texts, generate_synthetic
from distillkit.data.template import format_prompt
from distillkit.models.tokenizers import KINDS, cached_tiny_tokenizer, train_tiny_tokenizer
from distillkit.utils.io import read_jsonl

VOCAB = 2000


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-unicode table, rebuilt from its definition."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


UNICODE_TO_BYTE = _gpt2_unicode_to_byte()


def token_bytes(kind: str, token: str) -> bytes:
    """The UTF-8 bytes a token stands for (``▁`` read as a space)."""
    if kind == "bpe":
        return bytes(UNICODE_TO_BYTE[c] for c in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode("utf-8")


def check_offsets(kind: str, tok, text: str) -> None:
    """Every token's offsets point at its own surface in ``text``.

    Consecutive tokens are grouped while their bytes do not yet form whole UTF-8 characters, or
    while they share the same offsets (the byte tokens of one character, or of a run of unknown
    characters, all point at the whole character or run); each group's surface, stripped, must equal
    the stripped text under the group's offsets.
    """
    enc = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    special = set(tok.all_special_ids)
    groups: list[tuple[bytes, list[tuple[int, int]]]] = []
    for tid, token, (start, end) in zip(enc["input_ids"], tokens, enc["offset_mapping"]):
        assert 0 <= start <= end <= len(text), (token, start, end, text)
        if tid in special:
            assert (start, end) == (0, 0), token
            continue
        piece = token_bytes(kind, token)
        if groups and (not _decodes(groups[-1][0]) or groups[-1][1][-1] == (start, end)):
            groups[-1] = (groups[-1][0] + piece, [*groups[-1][1], (start, end)])
        else:
            groups.append((piece, [(start, end)]))
    for i, (raw, spans) in enumerate(groups):
        assert _decodes(raw), "text ended inside a multibyte character"
        surface = raw.decode("utf-8")
        lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
        if i == 0 and kind == "unigram" and surface == " " and lo == 0 and not text[:1].isspace():
            # the "▁" that Metaspace prepends to the first word: no source character, it gets the
            # first character's offsets (0, 1), shared with the token after it
            assert (lo, hi) == (0, 1) and spans == [(0, 1)]
            continue
        assert surface.strip() == text[lo:hi].strip(), (surface, lo, hi, text[lo:hi])


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-tok-cache")
    return {kind: cached_tiny_tokenizer(kind, VOCAB, cache_root=root) for kind in KINDS}


@pytest.fixture(scope="module")
def toks(tok_dirs):
    return {kind: AutoTokenizer.from_pretrained(str(path)) for kind, path in tok_dirs.items()}


@pytest.fixture(scope="module")
def synthetic_texts():
    rows = generate_synthetic(60, seed=99)  # not the tokenizer's training seed
    return [format_prompt(r) + r["output"] for r in rows] + corpus_texts(rows)[:60]


# ---- train, save, reload ----------------------------------------------------------------------------


def test_train_save_reload(tmp_path):
    texts = corpus_texts(generate_synthetic(300, seed=0))
    for kind in KINDS:
        trained = train_tiny_tokenizer(kind, texts, 600, tmp_path / kind)
        assert (tmp_path / kind / "tokenizer.json").is_file()
        reloaded = AutoTokenizer.from_pretrained(str(tmp_path / kind))
        assert reloaded.is_fast and len(reloaded) == len(trained) <= 600
        for text in texts[:20]:
            assert reloaded(text)["input_ids"] == trained(text)["input_ids"]


def test_special_tokens(toks):
    bpe, uni = toks["bpe"], toks["unigram"]
    assert bpe.bos_token == bpe.eos_token == bpe.unk_token == "<|endoftext|>" and bpe.pad_token is None
    assert (uni.unk_token, uni.bos_token, uni.eos_token, uni.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert len({uni.unk_token_id, uni.bos_token_id, uni.eos_token_id, uni.pad_token_id}) == 4
    for tok in toks.values():
        assert len(tok) <= VOCAB


def test_bos_unigram_adds_exactly_one_bpe_none(toks, synthetic_texts):
    bpe, uni = toks["bpe"], toks["unigram"]
    for text in synthetic_texts[:30]:
        enc = uni(text, return_offsets_mapping=True)
        assert enc["input_ids"][0] == uni.bos_token_id and enc["offset_mapping"][0] == (0, 0)
        assert enc["input_ids"].count(uni.bos_token_id) == 1
        assert uni.eos_token_id not in enc["input_ids"]
        ids = bpe(text)["input_ids"]
        assert bpe.eos_token_id not in ids
        assert ids == bpe(text, add_special_tokens=False)["input_ids"]
        assert enc["input_ids"][1:] == uni(text, add_special_tokens=False)["input_ids"]


def test_bad_kind_and_arguments(tmp_path):
    with pytest.raises(ValueError, match="wordpiece.*valid: bpe, unigram"):
        train_tiny_tokenizer("wordpiece", ["a b"], 500, tmp_path)
    with pytest.raises(ValueError, match="wordpiece.*valid: bpe, unigram"):
        cached_tiny_tokenizer("wordpiece", 500)
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tiny_tokenizer("bpe", ["a b"], 100, tmp_path)
    with pytest.raises(ValueError, match="dolly"):
        cached_tiny_tokenizer("bpe", 500, corpus="dolly")  # no texts for a non-synthetic corpus
    assert not any(tmp_path.iterdir())  # all refused before any work


# ---- offsets and decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_offsets_synthetic(kind, toks, synthetic_texts):
    for text in synthetic_texts:
        check_offsets(kind, toks[kind], text)


@pytest.mark.parametrize("kind", KINDS)
def test_offsets_dolly(kind, toks, data_root):
    texts = [
        format_prompt(r) + str(r.get("output", "")) for r in read_jsonl(data_root / "dolly" / "valid.jsonl")
    ]
    non_ascii = [t for t in texts if not t.isascii()][:20]
    assert non_ascii, "expected some non-ASCII Dolly texts"
    texts = texts[:60] + non_ascii
    for text in texts:
        check_offsets(kind, toks[kind], text)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_round_trips_ascii(kind, toks, synthetic_texts):
    tok = toks[kind]
    for text in synthetic_texts:
        assert text.isascii()
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_unigram_leading_space_offsets(toks):
    tok = toks["unigram"]
    text = "The quick engineer"
    enc = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    # every ▁ after the first word points at the space it replaced
    for token, (start, _) in zip(tokens[2:], enc["offset_mapping"][2:]):
        if token.startswith("▁"):
            assert text[start] == " "
    # a word unseen in training still starts at its own first character or the space before it
    check_offsets("unigram", tok, "Zyx qwv Zyx")


MULTIBYTE = "Café 🙂 naïve — 東京, the quick engineer 👩‍🔧 repairs ü"


@pytest.mark.parametrize("kind", KINDS)
def test_multibyte_does_not_crash(kind, toks):
    tok = toks[kind]
    check_offsets(kind, tok, MULTIBYTE)
    # byte-level BPE and the byte fallback of the Unigram both keep every character
    assert tok.decode(tok(MULTIBYTE)["input_ids"], skip_special_tokens=True) == MULTIBYTE
    assert tok.unk_token_id not in tok(MULTIBYTE)["input_ids"]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="▁"), min_size=1, max_size=30
    )
)
def test_random_unicode_offsets_and_round_trip(toks, text):
    for kind, tok in toks.items():
        enc = tok(text, return_offsets_mapping=True)
        assert all(0 <= s <= e <= len(text) for s, e in enc["offset_mapping"])
        decoded = tok.decode(enc["input_ids"], skip_special_tokens=True)
        if kind == "bpe":
            assert decoded == text
        else:  # SentencePiece-style decoding drops one leading space, as Llama's does
            assert decoded == (text[1:] if text.startswith(" ") else text)


def test_the_two_kinds_segment_differently(toks, synthetic_texts):
    bpe, uni = toks["bpe"], toks["unigram"]
    differ = 0
    for text in synthetic_texts:
        n_bpe = len(bpe(text, add_special_tokens=False)["input_ids"])
        n_uni = len(uni(text, add_special_tokens=False)["input_ids"])
        differ += n_bpe != n_uni
    assert differ >= 0.7 * len(synthetic_texts)


def test_tiny_vocab_compresses_synthetic_text(toks, synthetic_texts):
    """Both tokenizers learned whole frequent words: fewer tokens than words + punctuation + newlines."""
    n_pieces = sum(len(text.split()) + sum(text.count(c) for c in ".,?:;#\n") for text in synthetic_texts)
    for tok in toks.values():
        n_tokens = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for text in synthetic_texts)
        assert n_tokens <= n_pieces
    words = sorted(
        {w for text in synthetic_texts for w in re.findall(r"(?<![A-Za-z])[a-z]+(?![A-Za-z])", text)}
    )
    for kind, tok in toks.items():
        # " word" is one piece: "Ġword" (bpe), "▁word" (unigram, which prepends the ▁ itself)
        whole = [w for w in words if len(tok.tokenize(f" {w}" if kind == "bpe" else w)) == 1]
        assert len(whole) >= 0.75 * len(words), (kind, len(whole), len(words))


# ---- cache -------------------------------------------------------------------------------------------


@pytest.fixture
def counting_trainer(monkeypatch):
    calls = []
    real = tokmod.train_tiny_tokenizer

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tokmod, "train_tiny_tokenizer", counted)
    return calls


def test_cache_trains_once(tmp_path, counting_trainer):
    texts = corpus_texts(generate_synthetic(200, seed=4))
    first = cached_tiny_tokenizer("unigram", 500, corpus="tiny", cache_root=tmp_path, texts=texts)
    mtime = (first / "tokenizer.json").stat().st_mtime_ns
    again = cached_tiny_tokenizer("unigram", 500, corpus="tiny", cache_root=tmp_path, texts=iter(texts))
    assert again == first and counting_trainer == ["unigram"]
    assert (first / "tokenizer.json").stat().st_mtime_ns == mtime
    assert first.parent == tmp_path / "tokenizers" and first.name.startswith("unigram-500-tiny-")
    AutoTokenizer.from_pretrained(str(first))

    other_corpus = cached_tiny_tokenizer("unigram", 500, corpus="tiny2", cache_root=tmp_path, texts=texts)
    other_texts = cached_tiny_tokenizer("unigram", 500, corpus="tiny", cache_root=tmp_path, texts=texts[:-1])
    other_kind = cached_tiny_tokenizer("bpe", 500, corpus="tiny", cache_root=tmp_path, texts=texts)
    assert len({first, other_corpus, other_texts, other_kind}) == 4
    assert counting_trainer == ["unigram", "unigram", "unigram", "bpe"]
    leftovers = [p.name for p in (tmp_path / "tokenizers").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cache_default_location_is_cache_dir(counting_trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))
    path = cached_tiny_tokenizer("bpe", 400, corpus="x", texts=["a tiny corpus", "of two texts"])
    assert path.parent == tmp_path / "tokenizers"


def test_cache_failed_training_leaves_nothing(tmp_path, monkeypatch):
    def broken(kind, texts, vocab_size, save_dir):
        (save_dir / "tokenizer.json").write_text("half")
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(tokmod, "train_tiny_tokenizer", broken)
    with pytest.raises(RuntimeError, match="killed"):
        cached_tiny_tokenizer("bpe", 400, corpus="x", cache_root=tmp_path, texts=["some text"])
    assert [p.name for p in (tmp_path / "tokenizers").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_parallel_callers_train_once(tmp_path, counting_trainer):
    texts = corpus_texts(generate_synthetic(200, seed=5))
    results, errors = [], []

    def job():
        try:
            results.append(cached_tiny_tokenizer("bpe", 450, corpus="par", cache_root=tmp_path, texts=texts))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 4
    assert counting_trainer == ["bpe"]
