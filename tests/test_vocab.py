"""Vocabulary maps on the real GPT-2 / Qwen2 tokenizers and the project's tiny BPE / Unigram pair."""

from __future__ import annotations

import json

import pytest
import torch

from distillkit import vocab as V


@pytest.fixture(scope="module")
def real(gpt2_tokenizer, qwen_tokenizer):
    """(teacher = Qwen2, student = GPT-2) vocabularies, as in the qwen-to-gpt2 pair."""
    return V.vocab_of(qwen_tokenizer), V.vocab_of(gpt2_tokenizer)


@pytest.fixture(scope="module")
def tiny():
    """(teacher = tiny Unigram with ▁ and byte fallback, student = tiny byte-level BPE with Ġ)."""
    from transformers import AutoTokenizer

    from distillkit.models.tokenizers import cached_tiny_tokenizer

    bpe = AutoTokenizer.from_pretrained(str(cached_tiny_tokenizer("bpe", 1000)))
    uni = AutoTokenizer.from_pretrained(str(cached_tiny_tokenizer("unigram", 1000)))
    return V.vocab_of(uni), V.vocab_of(bpe)


def tid(vocab: V.Vocab, token: str) -> int:
    return vocab.tokens.index(token)


def levenshtein(a: str, b: str) -> int:
    """Textbook dynamic programme (an independent reference for the mined search)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def brute_nearest(query: str, student: V.Vocab) -> tuple[int, int]:
    """(smallest student id at the minimum lower-cased edit distance, that distance), over regular tokens."""
    q = query.lower()
    best, best_id = None, None
    for s, tok in enumerate(student.tokens):
        if not student.is_regular(s):
            continue
        y = tok.lower()
        if best is not None and abs(len(y) - len(q)) > best:
            continue  # a lower bound of the distance: cannot win
        d = levenshtein(q, y)
        if best is None or d < best:
            best, best_id = d, s
    return best_id, best


# ----------------------------------------------------------------------------- vocabularies
def test_vocab_sizes_hashes_and_byte_level(real, tiny, qwen_tokenizer):
    qwen, gpt2 = real
    assert (
        len(qwen) == len(qwen_tokenizer) == 151646
    )  # the tokenizer's size, not Qwen's 151,936 embedding rows
    assert len(gpt2) == 50257
    assert qwen.byte_level and gpt2.byte_level
    uni, bpe = tiny
    assert bpe.byte_level and not uni.byte_level
    assert uni.marker == "▁" and bpe.marker == "Ġ"
    assert qwen.eos == 151643 and gpt2.eos == 50256
    assert len({qwen.hash, gpt2.hash, uni.hash, bpe.hash}) == 4
    assert V.vocab_of(qwen_tokenizer).hash == qwen.hash  # stable


def test_token_bytes():
    assert V.token_bytes("Ġthe", True) == b" the" == V.token_bytes("▁the", False)
    assert V.token_bytes("Ã©", True) == "é".encode()
    assert V.token_bytes("<0x0A>", False) == b"\n"
    assert V.token_bytes("the", True) != V.token_bytes("Ġthe", True)  # the space is kept


# ----------------------------------------------------------------------------- overlap kinds
@pytest.mark.parametrize("kind", ["exact", "space", "bytes"])
def test_overlaps_on_real_pair(real, kind):
    qwen, gpt2 = real
    vmap = V.vocab_map(qwen, gpt2, kind)
    t2s = vmap.t2s
    assert t2s.shape == (len(qwen),) and t2s.dtype == torch.long
    assert int(t2s.max()) < len(gpt2) and int(t2s.min()) >= -1
    for token in ("Ġthe", "1", "9", "!", ",", "?", "Ġ(", "æĺ¯", "ĠHello"):
        assert gpt2.tokens[int(t2s[tid(qwen, token)])] == token, token
    assert int(t2s[tid(qwen, "ä¸ŃåĽ½")]) == -1  # 中国 is one Qwen token, three GPT-2 pieces
    assert int(t2s[qwen.eos]) == gpt2.eos
    assert int(t2s[tid(qwen, "<|im_start|>")]) == -1
    # the 1:1 overlap: identical strings (both byte-level, so every kind agrees), ascending student ids
    s_ids, t_ids = vmap.overlap()
    assert torch.all(s_ids[1:] > s_ids[:-1])
    assert len(set(t_ids.tolist())) == len(t_ids)
    assert all(gpt2.tokens[s] == qwen.tokens[t] for s, t in zip(s_ids.tolist(), t_ids.tolist()))
    # every exact string match is found (independent set intersection over regular tokens + EOS)
    regular = set(gpt2.tokens[:50256])
    expected = {t for t, tok in enumerate(qwen.tokens) if qwen.is_regular(t) and tok in regular}
    assert set(torch.nonzero(t2s.ge(0)).squeeze(1).tolist()) == expected | {qwen.eos}


def test_space_and_bytes_kinds_join_the_markers(tiny):
    uni, bpe = tiny
    exact = V.vocab_map(uni, bpe, "exact")
    space = V.vocab_map(uni, bpe, "space")
    byts = V.vocab_map(uni, bpe, "bytes")
    the_u = tid(uni, "▁the")
    assert int(exact.t2s[the_u]) == -1  # "▁the" is not a BPE string
    assert bpe.tokens[int(space.t2s[the_u])] == "Ġthe"
    assert bpe.tokens[int(byts.t2s[the_u])] == "Ġthe"
    assert space.overlap_size > 2 * exact.overlap_size
    # each kind's matches, checked from its definition
    for t, s in enumerate(space.t2s.tolist()):
        if s >= 0 and uni.is_regular(t):
            assert uni.tokens[t].replace("Ġ", "▁") == bpe.tokens[s].replace("Ġ", "▁")
    for t, s in enumerate(byts.t2s.tolist()):
        if s >= 0 and uni.is_regular(t):
            assert V.token_bytes(uni.tokens[t], False) == V.token_bytes(bpe.tokens[s], True)
    # byte-fallback pieces <0xNN> map to the BPE byte of the same value
    nl = tid(uni, "<0x0A>")
    assert V.token_bytes(bpe.tokens[int(byts.t2s[nl])], True) == b"\n"
    # EOS with EOS; the Unigram's <unk>, <s>, <pad> have no BPE counterpart
    assert int(space.t2s[uni.eos]) == bpe.eos
    for special in ("<unk>", "<s>", "<pad>"):
        assert int(space.t2s[tid(uni, special)]) == -1


# ----------------------------------------------------------------------------- the teacher -> student LUT
def test_lut_never_maps_an_out_of_vocabulary_string_to_unk_or_eos(real, tiny):
    qwen, gpt2 = real
    lut = V.teacher_to_student_lut(qwen, gpt2)
    assert lut.shape == (len(qwen),)
    gpt2_strings = set(gpt2.tokens)
    outside = [t for t, tok in enumerate(qwen.tokens) if tok not in gpt2_strings]
    assert len(outside) > 100_000
    assert bool(torch.all(lut[outside] == -1))
    # only the teacher's EOS reaches the student's EOS (= GPT-2's unk and bos)
    assert torch.nonzero(lut.eq(gpt2.eos)).squeeze(1).tolist() == [qwen.eos]
    uni, bpe = tiny
    lut = V.teacher_to_student_lut(uni, bpe)
    assert torch.nonzero(lut.eq(bpe.eos)).squeeze(1).tolist() == [uni.eos]
    assert int(lut[tid(uni, "<unk>")]) == -1


# ----------------------------------------------------------------------------- MinED
def test_mined_map_on_a_subset_of_the_real_pair(real):
    qwen, gpt2 = real
    tokens = ["Ġthe", "ĠThe", "1", "7", "!", "?", "æĺ¯", "ä¸ŃåĽ½", "åįİä¸º", "FullName", "_TOOLTIP"]
    ids = [tid(qwen, t) for t in tokens] + [qwen.eos, tid(qwen, "<|im_start|>")]
    vmap = V.vocab_map(qwen, gpt2, "mined", teacher_ids=ids, workers=1)
    t2s = vmap.t2s
    for token in ("Ġthe", "ĠThe", "1", "7", "!", "?", "æĺ¯"):  # exact matches stay exact
        assert gpt2.tokens[int(t2s[tid(qwen, token)])] == token
        assert bool(vmap.exact[tid(qwen, token)]) and int(vmap.distance[tid(qwen, token)]) == 0
    for token in (
        "ä¸ŃåĽ½",
        "åįİä¸º",
        "FullName",
        "_TOOLTIP",
    ):  # not GPT-2 strings: the nearest, checked by brute force
        t = tid(qwen, token)
        assert not bool(vmap.exact[t])
        assert (int(t2s[t]), int(vmap.distance[t])) == brute_nearest(token, gpt2), token
    assert int(t2s[qwen.eos]) == gpt2.eos
    assert int(t2s[tid(qwen, "<|im_start|>")]) == -1  # a special never maps by edit distance
    asked = torch.zeros(len(qwen), dtype=torch.bool)
    asked[ids] = True
    assert bool(torch.all(t2s[~asked] == -1))
    assert int(t2s.max()) < len(gpt2)
    assert vmap.summary()["restricted_to"] == len(ids)


def test_mined_swaps_the_space_marker_and_lowercases(tiny):
    uni, bpe = tiny
    ids = [tid(uni, t) for t in ("▁the", "▁The", "▁school.", "<0x0A>")]
    vmap = V.vocab_map(uni, bpe, "mined", teacher_ids=ids, workers=1)
    assert bpe.tokens[int(vmap.t2s[ids[0]])] == "Ġthe"  # ▁ written as Ġ, then an exact match
    for t in ids[1:]:
        query = uni.tokens[t].replace("▁", "Ġ")
        expected = tid(bpe, query) if query in bpe.tokens else brute_nearest(query, bpe)[0]
        assert int(vmap.t2s[t]) == expected, uni.tokens[t]


def test_stu2tea_takes_the_smallest_teacher_id(tiny):
    uni, bpe = tiny
    vmap = V.vocab_map(uni, bpe, "mined", workers=1)
    s2t = vmap.stu2tea()
    assert s2t.shape == (len(bpe),)
    for s in range(len(bpe)):
        pre = torch.nonzero(vmap.t2s.eq(s)).squeeze(1)
        assert int(s2t[s]) == (int(pre.min()) if pre.numel() else -1)


# ----------------------------------------------------------------------------- cache, checks, CLI
def test_second_call_reads_the_cache(tiny, tmp_path, monkeypatch):
    uni, bpe = tiny
    first = V.vocab_map(uni, bpe, "mined", cache_root=tmp_path, workers=1)
    files = list((tmp_path / "vocab").glob("mined-*.npz"))
    assert len(files) == 1

    def boom(*args, **kwargs):
        raise AssertionError("the map was rebuilt instead of read from the cache")

    monkeypatch.setattr(V, "_build", boom)
    second = V.vocab_map(uni, bpe, "mined", cache_root=tmp_path, workers=1)
    for name in ("t2s", "exact", "distance"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert second.summary() == first.summary()
    # a different kind or direction is another key
    with pytest.raises(AssertionError, match="rebuilt"):
        V.vocab_map(bpe, uni, "mined", cache_root=tmp_path)


def test_small_overlap_fails_naming_the_key_before_the_search(tiny, monkeypatch):
    uni, bpe = tiny
    with pytest.raises(ValueError, match=r"method\.min_vocab_overlap=0\.9") as err:
        V.vocab_map(uni, bpe, "exact", min_overlap=0.9, key="method.min_vocab_overlap", use_cache=False)
    assert "'exact'" in str(err.value) and "Lower method.min_vocab_overlap" in str(err.value)

    def boom(*args, **kwargs):
        raise AssertionError("the edit-distance search ran before the overlap check")

    monkeypatch.setattr(V, "_nearest", boom)
    with pytest.raises(ValueError, match="min_vocab_overlap"):
        V.vocab_map(uni, bpe, "mined", min_overlap=0.9, key="min_vocab_overlap", use_cache=False)
    V.require_overlap(V.vocab_map(uni, bpe, "space", use_cache=False), 0.2, "k")  # passes


def test_bad_arguments_name_the_valid_choices(tiny):
    uni, bpe = tiny
    with pytest.raises(ValueError, match=r"kind 'edit'.*'exact', 'space', 'bytes', 'mined'"):
        V.vocab_map(uni, bpe, "edit")
    with pytest.raises(ValueError, match=r"teacher_ids \[5000\].*0\.\.998"):
        V.vocab_map(uni, bpe, "mined", teacher_ids=[1, 5000], use_cache=False)
    with pytest.raises(ValueError, match="workers=0"):
        V.vocab_map(uni, bpe, "mined", workers=0)
    with pytest.raises(ValueError, match=r"k=1\.5"):
        V.require_overlap(V.vocab_map(uni, bpe, "space"), 1.5, "k")


def test_cli_builds_and_prints_a_summary(data_root, capsys, tmp_path):
    code = V.main(
        [
            "build",
            "--teacher",
            str(data_root / "tokenizers" / "qwen2"),
            "--student",
            str(data_root / "tokenizers" / "gpt2"),
            "--kind",
            "space",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert (
        summary["kind"] == "space" and summary["teacher_size"] == 151646 and summary["student_size"] == 50257
    )
    assert summary["overlap"] == 42257
    assert list((tmp_path / "vocab").glob("space-*.npz"))


def test_cli_bad_tokenizer_is_one_line(capsys, tmp_path):
    code = V.main(["build", "--teacher", str(tmp_path / "none"), "--student", str(tmp_path / "none")])
    assert code == 2
    assert "model.teacher.tokenizer" in capsys.readouterr().err


@pytest.mark.slow
def test_full_mined_map_qwen_to_gpt2(real):
    """The whole 151,646 x 50,257 search (about 50 CPU-seconds)."""
    qwen, gpt2 = real
    vmap = V.vocab_map(qwen, gpt2, "mined", use_cache=False)
    regular = torch.tensor([qwen.is_regular(t) for t in range(len(qwen))])
    assert bool(torch.all(vmap.t2s[regular] >= 0)) and int(vmap.t2s.max()) < len(gpt2)
    assert int(vmap.exact[regular].sum()) == 42256 and int(vmap.exact.sum()) == 42257  # + EOS with EOS
    # DSKD's qwen_to_gpt2 file maps onto 43,262 distinct GPT-2 ids (ties are broken differently there)
    assert 42_500 < vmap.summary()["distinct_student_ids"] < 44_000  # 43,269 here
    for token in ("ä¸ŃåĽ½", "åįİä¸º"):
        t = tid(qwen, token)
        assert (int(vmap.t2s[t]), int(vmap.distance[t])) == brute_nearest(token, gpt2)
