"""The project's own tiny tokenizers, for the offline default and the cross-tokenizer tests.

Cross-tokenizer distillation needs a teacher and a student whose tokenizers *differ in kind*, as
Qwen (byte-level BPE) and Llama/Mistral (SentencePiece) do. Two kinds are trained here with the HF
``tokenizers`` library and wrapped as ``transformers.PreTrainedTokenizerFast``:

``bpe``
    GPT-2-like byte-level BPE: ``ByteLevel`` pre-tokenizer (no prefix space), decoder and
    post-processor (offsets keep the leading space, as GPT-2's do), the full 256-byte alphabet, one
    special token ``<|endoftext|>`` that is bos, eos and unk; no BOS is added and there is no pad
    token (the data code pads by attention mask).
``unigram``
    SentencePiece-like Unigram with the ``▁`` Metaspace pre-tokenizer/decoder (prepend scheme
    ``first``, as Llama/Mistral), byte fallback (``<0x00>``..``<0xFF>``, so no character is ever
    unknown), special tokens ``<unk>``, ``<s>`` (bos, added at the start of every encoding by a
    ``TemplateProcessing`` post-processor), ``</s>`` (eos, not added) and ``<pad>``.

Both are saved with ``save_pretrained`` and reload with ``AutoTokenizer.from_pretrained(folder)``.
Whether BOS is added is decided by the saved post-processor alone: transformers 5 neither saves nor
reloads ``add_bos_token`` for tokenizers with a ``tokenizer.json``, so that attribute reads False for
both kinds; to know whether a tokenizer adds BOS, encode a text and look.

Offsets are character offsets into the original text. Special tokens get ``(0, 0)``. A ``bpe``
token keeps its leading space in its offsets (``"Ġquick"`` -> ``" quick"``, as GPT-2). The ``▁`` that
Metaspace prepends to the first word has no source character: when it is a piece of its own it
gets the first character's offsets ``(0, 1)``, shared with the next token. Characters outside the
Unigram's pieces (all printable ASCII is always in) fall back to bytes; every byte token of such a
run of unknown characters gets the offsets of the whole run, as in ``tokenizers``' byte fallback.
:func:`cached_tiny_tokenizer` trains one once per (kind, vocabulary size, corpus) and caches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from distillkit.utils.io import cache_dir, locked

KINDS: tuple[str, ...] = ("bpe", "unigram")

BPE_EOS = "<|endoftext|>"
UNIGRAM_SPECIALS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
MODEL_MAX_LENGTH = 2048
_ASCII_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_TWIN_MARK = "\x01"  # see _train_unigram

# Bump when the training recipe changes, so old cached tokenizers are not reused.
RECIPE_VERSION = 5
# The fixed synthetic corpus of ``cached_tiny_tokenizer(corpus="synthetic")``.
SYNTHETIC_CORPUS_ROWS = 4000
SYNTHETIC_CORPUS_SEED = 1234


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")


def _min_vocab(kind: str) -> int:
    # byte alphabet (+ specials) and room for at least a few learned pieces
    return 256 + (1 if kind == "bpe" else len(UNIGRAM_SPECIALS)) + 32


def _train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _train_unigram(texts: list[str], vocab_size: int) -> Tokenizer:
    metaspace = {"replacement": "▁", "prepend_scheme": "first", "split": True}
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),  # the byte-fallback pieces are added below
        special_tokens=list(UNIGRAM_SPECIALS),
        unk_token="<unk>",
        initial_alphabet=list(_ASCII_PRINTABLE),  # digits etc. stay pieces even if the corpus lacks them
        show_progress=False,
    )
    # HF's UnigramTrainer seeds its candidate pieces with substrings occurring at least twice among
    # the *distinct* pre-tokenized words (their counts are ignored there, used only later by EM). On
    # a corpus with a few hundred distinct words, frequent whole words such as "▁that" occur once and
    # are never candidates, so "that" would always be split into "▁th", "a", "t". One extra text
    # holding the most frequent words once more, with a marker appended, makes each of them a
    # candidate; the marked pieces (seen once each, so weightless in EM) are dropped below. Only the
    # top ``vocab_size`` words are twinned: on a large corpus (Dolly) twinning every word would
    # triple the training time for nothing.
    texts = [t.replace(_TWIN_MARK, "") for t in texts]
    counts = Counter(w for t in texts for w in t.split(" ") if w)
    twins = " ".join(w + _TWIN_MARK for w, _ in counts.most_common(vocab_size))
    tok.train_from_iterator([*texts, twins], trainer=trainer, length=len(texts) + 1)

    # Byte fallback, as Llama: add <0xNN> pieces (scored below every learned piece) so that a
    # character never seen in training becomes its UTF-8 bytes instead of <unk>.
    spec = json.loads(tok.to_str())
    vocab = [[piece, score] for piece, score in spec["model"]["vocab"] if _TWIN_MARK not in piece]
    spec["model"]["vocab"] = vocab
    known = {piece for piece, _ in vocab}
    floor = min(score for piece, score in vocab if piece not in UNIGRAM_SPECIALS) - 10.0
    vocab.extend([piece, floor] for piece in BYTE_TOKENS if piece not in known)
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))

    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(**metaspace)])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos_id)]
    )
    return tok


def train_tiny_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int, save_dir: str | os.PathLike
) -> PreTrainedTokenizerFast:
    """Train a tiny tokenizer of ``kind`` ("bpe" or "unigram") on ``texts``, save it to ``save_dir``.

    ``vocab_size`` is the largest vocabulary (special and byte tokens included); a small corpus may
    give fewer pieces. Returns the wrapped tokenizer; ``AutoTokenizer.from_pretrained(save_dir)``
    reloads the same thing.
    """
    _check_kind(kind)
    if vocab_size < _min_vocab(kind):
        raise ValueError(
            f"vocab_size={vocab_size} too small for a {kind} tokenizer; need >= {_min_vocab(kind)}"
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tiny_tokenizer got no non-empty texts")

    if kind == "bpe":
        backend = _train_bpe(texts, vocab_size)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token=BPE_EOS,
            eos_token=BPE_EOS,
            unk_token=BPE_EOS,
            model_max_length=MODEL_MAX_LENGTH,
        )
    else:
        backend = _train_unigram(texts, vocab_size)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            model_max_length=MODEL_MAX_LENGTH,
        )
    tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def synthetic_corpus() -> list[str]:
    """The fixed corpus of the synthetic tiny tokenizers: synthetic rows and their formatted prompts."""
    from distillkit.data.synthetic import corpus_texts, generate_synthetic
    from distillkit.data.template import format_prompt

    rows = generate_synthetic(SYNTHETIC_CORPUS_ROWS, seed=SYNTHETIC_CORPUS_SEED)
    return corpus_texts(rows) + [format_prompt(row) + row["output"] for row in rows]


def cached_tiny_tokenizer(
    kind: str,
    vocab_size: int,
    corpus: str = "synthetic",
    cache_root: str | os.PathLike | None = None,
    texts: Iterable[str] | None = None,
) -> Path:
    """The folder of a tiny tokenizer, trained once and cached.

    The folder is ``cache_dir(cache_root)/tokenizers/{kind}-{vocab_size}-{corpus}-{hash}``, the hash
    covering the recipe version and the training texts. ``texts=None`` is allowed only for
    ``corpus="synthetic"`` (the fixed :func:`synthetic_corpus`); any other corpus passes its own texts.
    Training happens under a file lock into a temporary folder beside the target, which is then
    ``os.replace``d into place, so parallel jobs never see half a tokenizer.
    """
    _check_kind(kind)
    if vocab_size < _min_vocab(kind):
        raise ValueError(
            f"vocab_size={vocab_size} too small for a {kind} tokenizer; need >= {_min_vocab(kind)}"
        )
    if texts is None:
        if corpus != "synthetic":
            raise ValueError(f"corpus={corpus!r} needs its texts; only corpus='synthetic' builds its own")
        texts = synthetic_corpus()
    texts = list(texts)
    key = hashlib.sha256(f"{RECIPE_VERSION}:{kind}:{vocab_size}:{_texts_digest(texts)}".encode()).hexdigest()[
        :16
    ]
    root = cache_dir(cache_root) / "tokenizers"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{kind}-{vocab_size}-{corpus}-{key}"
    with locked(target):
        if (target / "tokenizer.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
        try:
            train_tiny_tokenizer(kind, texts, vocab_size, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private
            if target.exists():  # a broken leftover (no tokenizer.json): replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
