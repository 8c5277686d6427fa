"""DistiLLM's adaptive student-generated outputs (distillkit.data.onpolicy): the replay buffer, the
adaptive threshold, the per-step choice, the generated batches (both tokenizations, labels, spans)
and short pipeline runs."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import distillkit.eval.generate as generate_mod
from distillkit.data.datamodule import DistillDataModule, collate
from distillkit.data.encode import Encoded, Example
from distillkit.data.onpolicy import ReplayBuffer, StudentGeneratedData, check_settings, next_threshold
from tests.helpers import SMALL, compose_cfg

WORD = re.compile(r"\w+|[^\w\s]")  # the WordSpanParser's words, rewritten here as the brute-force count
PROMPTS = [
    "### Instruction:\nName a fruit.\n\n### Response:\n",
    "### Instruction:\nWhat colour is the sky?\n\n### Response:\n",
    "### Instruction:\nGive a verb.\n\n### Response:\n",
    "### Instruction:\nCount to three.\n\n### Response:\n",
]
REFS = ["An apple.", "Blue.", "Run.", "One, two, three."]


# ----------------------------------------------------------------------------- helpers
def fake_example(index: int, shared: bool = True) -> Example:
    s = Encoded([1, 2, 3 + index], [-100, 3 + index, -100], [(0, 1), (1, 2), (0, 0)], [True, True, False], 1)
    t = s if shared else Encoded([9, 8], [8, -100], [(0, 2), (0, 0)], [True, False], 1)
    ex = Example(index, f"ab{index}", 1, [f"b{index}"], s, t)
    ex.grids["word"] = ([[0, 1]], [[0, 1]] if shared else [[0]])
    if not shared:
        ex.grids["aligned"] = ([[0], [1]], [[0], [0]])
        ex.pairs["eta"] = [(0, 0), (1, 0)]
    return ex


class CountingParser:
    """The regex word parser, counting its calls and whether one happened inside ``training_step``."""

    def __init__(self):
        from distillkit.spans.parsers import WordSpanParser

        self.inner = WordSpanParser()
        self.name = self.inner.name
        self.calls: list[int] = []

    def settings(self):
        return self.inner.settings()

    def version(self):
        return self.inner.version()

    def parse(self, texts):
        self.calls.append(len(texts))
        return self.inner.parse(texts)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A cross-tokenizer pair of project tokenizers: byte-level BPE (student), Unigram with BOS (teacher)."""
    from distillkit.models.pair import load_tokenizer
    from distillkit.models.tokenizers import cached_tiny_tokenizer

    root = tmp_path_factory.getbasetemp() / "distillkit-cache"
    student = load_tokenizer(str(cached_tiny_tokenizer("bpe", 2048, cache_root=root)), "student")
    teacher = load_tokenizer(str(cached_tiny_tokenizer("unigram", 512, cache_root=root)), "teacher")
    return student, teacher


@pytest.fixture(scope="module")
def student_model(tokenizers):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizers[0]
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


def make_dm(tokenizers, annotators=(), batch_size=4):
    from distillkit.data.annotate import span_annotator

    cfg = OmegaConf.create({"batch_size": batch_size, "max_prompt_tokens": 48, "max_total_tokens": 96})
    parser = CountingParser() if annotators == "words" else None
    ann = [span_annotator(parser, ("word",))] if parser else []
    dm = DistillDataModule(cfg, tokenizers[0], tokenizers[1], annotators=ann, shared_tokenizer=False)
    return dm, parser


def data_batch(dm):
    examples = dm.make_examples(PROMPTS, REFS)
    dm.annotate(examples)
    return collate(examples)


@pytest.fixture
def fake_generate(monkeypatch):
    """Replaces the student's generation with fixed responses (cycled); records every call."""
    state = SimpleNamespace(calls=[], responses=["alpha beta.", "gamma", "delta, epsilon!", "zeta eta theta"])

    def fake(model, tokenizer, prompts, **kwargs):
        state.calls.append((list(prompts), kwargs))
        return [state.responses[i % len(state.responses)] for i in range(len(prompts))]

    monkeypatch.setattr(generate_mod, "generate_responses", fake)
    return state


# ----------------------------------------------------------------------------- the replay buffer
def test_buffer_fifo_eviction_keeps_the_newest():
    buf = ReplayBuffer(capacity=3, seed=0)
    buf.push([fake_example(i) for i in range(2)])
    assert len(buf) == 2 and not buf.full
    buf.push([fake_example(i) for i in range(2, 5)])
    assert len(buf) == 3 and buf.full
    assert [ex.index for ex in buf.examples()] == [2, 3, 4]


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(1, 8), pushes=st.lists(st.integers(0, 6), max_size=8))
def test_buffer_holds_the_last_capacity_pushed(capacity, pushes):
    buf, pushed, n = ReplayBuffer(capacity, seed=1), [], 0
    for k in pushes:
        batch = [fake_example(n + i) for i in range(k)]
        n += k
        pushed += [ex.index for ex in batch]
        buf.push(batch)
    assert [ex.index for ex in buf.examples()] == pushed[max(len(pushed) - capacity, 0) :]


def test_buffer_sampling_is_seeded_and_distinct():
    def draws(seed):
        buf = ReplayBuffer(50, seed=seed)
        buf.push([fake_example(i) for i in range(20)])
        return [[ex.index for ex in buf.sample(5)] for _ in range(4)]

    a, b, other = draws(7), draws(7), draws(8)
    assert a == b and a != other
    assert all(len(set(d)) == 5 and set(d) <= set(range(20)) for d in a)
    assert len({tuple(d) for d in a}) > 1  # the RNG advances between draws
    with pytest.raises(ValueError, match="n=6 .* holding 5"):
        buf = ReplayBuffer(10)
        buf.push([fake_example(i) for i in range(5)])
        buf.sample(6)
    with pytest.raises(ValueError, match="capacity=0"):
        ReplayBuffer(0)


def test_buffer_state_round_trip_through_a_weights_only_load():
    buf = ReplayBuffer(4, seed=3)
    buf.push([fake_example(i, shared=i % 2 == 0) for i in range(6)])
    buf.sample(2)  # move the RNG away from its seed
    raw = io.BytesIO()
    torch.save(buf.state_dict(), raw)
    raw.seek(0)
    state = torch.load(raw, weights_only=True)  # plain containers only: safe checkpoint loading
    restored = ReplayBuffer(1, seed=99)
    restored.load_state_dict(state)
    assert restored.capacity == 4 and len(restored) == 4
    assert restored.examples() == buf.examples()  # dataclass equality: texts, both sides, spans, alignment
    for a, b in zip(restored.examples(), buf.examples()):
        assert (a.teacher is a.student) == (b.teacher is b.student)  # collate shares a shared side
    assert [ex.index for ex in restored.sample(3)] == [ex.index for ex in buf.sample(3)]
    restored.push([fake_example(10)])
    assert [ex.index for ex in restored.examples()] == [3, 4, 5, 10]  # capacity restored too


# ----------------------------------------------------------------------------- the adaptive threshold
def test_threshold_golden_sequence():
    # eps 0.1: 2.0 sets the reference; 2.11 >= 2.0 + 0.1 raises (new reference 2.11); 2.15 < 2.21 does
    # not; 2.3 >= 2.21 raises (reference 2.3); 2.2 does not; 2.45 >= 2.4 raises
    losses = [2.0, 2.05, 2.11, 2.15, 2.3, 2.2, 2.45]
    expected = [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3]
    threshold, ref, got = 0.0, None, []
    for x in losses:
        threshold, ref = next_threshold(threshold, ref, x, 0.1)
        got.append(threshold)
    assert got == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=25),
    eps=st.sampled_from([0.0, 0.05, 0.1, 0.5]),
    init=st.sampled_from([0.0, 0.3, 0.9]),
)
def test_threshold_matches_the_rule_on_the_callback(tokenizers, losses, eps, init):
    dm, _ = make_dm(tokenizers)
    source = StudentGeneratedData(dm, init_threshold=init, loss_eps=eps, monitor="val_loss")
    # the rule, written out: the first loss is the reference; a loss >= reference + eps raises the
    # threshold by one tenth (at most to 1) and becomes the reference
    raises, reference = 0, None
    for x in losses:
        trainer = SimpleNamespace(
            sanity_checking=False, callback_metrics={"val/loss": torch.tensor(x, dtype=torch.float64)}
        )
        source.on_validation_end(trainer, None)
        if reference is None:
            reference = x
        elif x >= reference + eps:
            raises, reference = raises + 1, x
        assert source.threshold == pytest.approx(min(init + 0.1 * raises, 1.0))
        assert source.reference_loss == pytest.approx(reference)


def test_threshold_caps_at_one_and_ignores_sanity_checks(tokenizers):
    dm, _ = make_dm(tokenizers)
    source = StudentGeneratedData(dm, init_threshold=0.85, loss_eps=0.1, monitor="val_loss")
    for x in [1.0, 2.0, 3.0, 4.0]:
        source.update_threshold(x)
    assert source.threshold == 1.0
    sanity = SimpleNamespace(sanity_checking=True, callback_metrics={"val/loss": torch.tensor(99.0)})
    source.on_validation_end(sanity, None)
    assert source.reference_loss == 4.0


class ScheduledStudent(torch.nn.Module):
    """A toy student: ``logits = scale * table[input_ids]``; the test sets ``scale`` epoch by epoch."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.scale = 1.0

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.scale * self.table[input_ids])


def golden_dev_ce(student: ScheduledStudent, batches) -> float:
    """Σ -log softmax(logits)[label] / #labels over every labelled token, float64 loops."""
    total, count = 0.0, 0
    table = student.table.detach().double() * student.scale
    for batch in batches:
        ids, labels = batch.student.input_ids.tolist(), batch.student.labels.tolist()
        for row_ids, row_labels in zip(ids, labels):
            for tok, label in zip(row_ids, row_labels):
                if label == -100:
                    continue
                z = table[tok]
                total += float(torch.logsumexp(z, 0) - z[label])
                count += 1
    return total / count


def dev_fixture(tokenizers):
    cfg = OmegaConf.create(
        {
            "batch_size": 2,
            "eval_batch_size": 2,
            "num_workers": 0,
            "max_prompt_tokens": 48,
            "max_total_tokens": 96,
        }
    )
    dm = DistillDataModule(cfg, tokenizers[0], tokenizers[1], shared_tokenizer=False)
    dm.examples["dev"] = dm.make_examples(PROMPTS, REFS)
    student = ScheduledStudent(len(tokenizers[0]))
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        student=student,
        student_vocab=len(tokenizers[0]),
        device=torch.device("cpu"),
        log=lambda name, value, **kw: logged.__setitem__(name, float(value)),
    )
    trainer = SimpleNamespace(
        sanity_checking=False,
        datamodule=dm,
        strategy=SimpleNamespace(reduce=lambda t, reduce_op: t, precision_plugin=None),
        callback_metrics={},
    )
    return dm, module, trainer, logged


def run_validation(source, trainer, module, dm):
    source.on_validation_epoch_start(trainer, module)
    for i, batch in enumerate(dm.val_dataloader()):
        source.on_validation_batch_end(trainer, module, None, batch, i)
    source.on_validation_epoch_end(trainer, module)


@pytest.mark.parametrize("eval_before", [True, False])
def test_dev_ce_threshold_rises_after_the_first_epoch(tokenizers, eval_before):
    """DistiLLM: the dev CE is measured before training; a first-epoch CE >= reference + eps raises the
    threshold at once. Without the evaluation before training the first validation only sets it."""
    dm, module, trainer, logged = dev_fixture(tokenizers)
    source = StudentGeneratedData(dm, init_threshold=0.0, loss_eps=0.1, eval_before_training=eval_before)
    assert source.monitor == "dev_ce"
    batches = list(dm.val_dataloader())
    # the toy schedule: the student's dev CE before training, after epoch 1, after epoch 2
    scales = [1.0, 2.0, 2.02]
    golden = []
    for sc in scales:
        module.student.scale = sc
        golden.append(golden_dev_ce(module.student, batches))
    assert golden[1] >= golden[0] + 0.1 and golden[2] < golden[1] + 0.1  # the schedule is what it claims

    module.student.scale = scales[0]
    source.on_train_start(trainer, module)
    if eval_before:
        assert source.reference_loss == pytest.approx(golden[0], rel=1e-5)
    else:
        assert source.reference_loss is None
    module.student.scale = scales[1]
    run_validation(source, trainer, module, dm)
    assert logged["val/student_ce"] == pytest.approx(golden[1], rel=1e-5)
    if eval_before:  # rose after epoch 1
        assert source.threshold == pytest.approx(0.1) and source.reference_loss == pytest.approx(
            golden[1], rel=1e-5
        )
    else:  # epoch 1 only set the reference
        assert source.threshold == 0.0 and source.reference_loss == pytest.approx(golden[1], rel=1e-5)
    module.student.scale = scales[2]
    run_validation(source, trainer, module, dm)
    assert source.threshold == pytest.approx(0.1 if eval_before else 0.0)


def test_dev_ce_ignores_val_loss_and_sanity_checks(tokenizers):
    dm, module, trainer, logged = dev_fixture(tokenizers)
    source = StudentGeneratedData(dm, loss_eps=0.0, eval_before_training=False)
    trainer.callback_metrics = {"val/loss": torch.tensor(5.0)}
    source.on_validation_end(trainer, module)  # dev_ce does not read val/loss
    assert source.reference_loss is None
    trainer.sanity_checking = True
    run_validation(source, trainer, module, dm)
    assert source.reference_loss is None and "val/student_ce" not in logged
    trainer.sanity_checking = False
    run_validation(source, trainer, module, dm)
    assert source.reference_loss == pytest.approx(
        golden_dev_ce(module.student, dm.val_dataloader()), rel=1e-5
    )


def test_restored_reference_skips_the_evaluation_before_training(tokenizers):
    dm, module, trainer, _ = dev_fixture(tokenizers)
    source = StudentGeneratedData(dm)
    source.reference_loss = 7.5  # as restored from a checkpoint
    source.on_train_start(trainer, module)
    assert source.reference_loss == 7.5


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"init_threshold": 1.5}, "init_threshold=1.5; must be in \\[0, 1\\]"),
        ({"loss_eps": -0.1}, "loss_eps=-0.1"),
        ({"capacity": 0}, "capacity=0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"temperature": "hot"}, "temperature='hot'; must be a number"),
        ({"replay_ratio": "sometimes"}, "replay_ratio='sometimes'; valid: decreasing, constant, increasing"),
        ({"monitor": "val/loss"}, "onpolicy.monitor='val/loss'; valid: dev_ce, val_loss"),
        ({"generated_eos": "drop"}, "onpolicy.generated_eos='drop'; valid: strip, keep, distillm"),
        ({"eval_before_training": "yes"}, "onpolicy.eval_before_training='yes'; must be true or false"),
    ],
)
def test_bad_settings_are_named(bad, match):
    good = dict(
        init_threshold=0.0,
        loss_eps=0.1,
        capacity=10,
        max_new_tokens=8,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        replay_ratio="decreasing",
    )
    with pytest.raises(ValueError, match=match):
        check_settings(**{**good, **bad})


def test_capacity_below_batch_size_is_refused(tokenizers):
    dm, _ = make_dm(tokenizers, batch_size=8)
    with pytest.raises(ValueError, match="capacity=4 is below data.batch_size=8"):
        StudentGeneratedData(dm, capacity=4)


# ----------------------------------------------------------------------------- one step
@pytest.mark.parametrize("generated_eos", ["strip", "keep", "distillm"])
def test_threshold_one_replaces_with_generated_pairs_on_both_sides(
    tokenizers, student_model, monkeypatch, generated_eos
):
    """Fresh generations tokenized by both models; by default (``strip``, DistiLLM's sampler drops the pad =
    EOS) a generated sample has no EOS token and no EOS label; ``keep`` appends and trains on it."""
    dm, parser = make_dm(tokenizers, annotators="words")
    batch = data_batch(dm)
    recorded = []
    real = generate_mod.generate_responses

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        recorded.append((kwargs, out))
        return out

    monkeypatch.setattr(generate_mod, "generate_responses", recording)
    seed = {"strip": 5, "keep": 6, "distillm": 7}[
        generated_eos
    ]  # other texts: the span cache would serve a repeat
    source = StudentGeneratedData(
        dm, init_threshold=1.0, max_new_tokens=12, seed=seed, generated_eos=generated_eos
    )
    parses_before = len(parser.calls)
    new = source.prepare(batch, student_model)
    source._pending = new
    assert source.replace(batch) is new and source.replace(batch) is batch  # handed out once

    ((kwargs, responses),) = recorded
    assert kwargs["do_sample"] and kwargs["max_new_tokens"] == 12 and kwargs["temperature"] == 1.0
    kept = [(p, r) for p, r in zip(PROMPTS, responses) if r]
    assert kept and new.texts == [p + r for p, r in kept]
    assert new.prompt_chars == [len(p) for p, _ in kept]
    assert source.last_mode == "fresh" and len(source.buffer) == len(kept)
    assert [ex.text for ex in source.buffer.examples()] == new.texts
    # spans: one parser call for the whole generated batch
    assert len(parser.calls) == parses_before + 1 and parser.calls[-1] == len(kept)

    for side, tok in ((new.student, tokenizers[0]), (new.teacher, tokenizers[1])):
        for row, (prompt, response) in enumerate(kept):
            p_ids = tok(prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]
            r_ids = tok(response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            eos = [tok.eos_token_id] if generated_eos == "keep" else []
            ids = p_ids + r_ids + eos
            n = int(side.attention_mask[row].sum())
            assert side.input_ids[row, :n].tolist() == ids
            # labels: the response (and the EOS when kept), each at the position that predicts it
            labels = side.labels[row].tolist()
            if generated_eos == "distillm":  # DistiLLM's positions P..P+R-1; the last predicts the stop
                expected = [-100] * len(p_ids) + r_ids[1:] + [tok.eos_token_id] + [-100] * (len(labels) - n)
                assert labels == expected and tok.eos_token_id not in side.input_ids[row, :n].tolist()
                continue
            expected = [-100] * (len(p_ids) - 1) + r_ids + eos + [-100] * (len(labels) - n + 1)
            assert labels == expected
            assert (tok.eos_token_id in labels) == (generated_eos == "keep")

    # the word spans, one grid on both sides: a regex word is kept when each side has a token inside it
    # (the reference rule: start + 1 >= word start and end <= word end; special tokens have empty offsets)
    def covered(side, row, start, end):
        return any(s < e and s + 1 >= start and e <= end for s, e in side.offsets[row].tolist())

    for row, (p, r) in enumerate(kept):
        words = [m.span() for m in WORD.finditer(p + r)]
        expected = sum(covered(new.student, row, a, b) and covered(new.teacher, row, a, b) for a, b in words)
        assert expected > 0
        for mem in (new.grids["word"].student, new.grids["word"].teacher):
            assert int(mem.span_mask[row].sum()) == expected
    assert new.student is not new.teacher


def test_threshold_zero_never_replaces(tokenizers, fake_generate):
    dm, parser = make_dm(tokenizers, annotators="words")
    batch = data_batch(dm)
    parses = len(parser.calls)
    source = StudentGeneratedData(dm, init_threshold=0.0)
    for step in range(30):
        assert source.prepare(batch, None, progress=step / 30) is None
        assert source.replace(batch) is batch
    assert not fake_generate.calls and len(source.buffer) == 0 and len(parser.calls) == parses


def test_replacement_rate_follows_the_threshold(tokenizers, fake_generate):
    dm, _ = make_dm(tokenizers)
    batch = data_batch(dm)
    source = StudentGeneratedData(dm, init_threshold=0.3, capacity=10_000)
    n = 600
    used = sum(source.prepare(batch, None) is not None for _ in range(n))
    sd = (n * 0.3 * 0.7) ** 0.5
    assert abs(used - 0.3 * n) < 4 * sd
    assert len(fake_generate.calls) == used  # buffer never full: every on-policy step generates afresh


def test_full_buffer_replays_without_generating_or_parsing(tokenizers, fake_generate):
    dm, parser = make_dm(tokenizers, annotators="words", batch_size=4)
    batch = data_batch(dm)
    source = StudentGeneratedData(dm, init_threshold=1.0, capacity=4, replay_ratio="decreasing")
    first = source.prepare(batch, None, progress=0.5)
    assert source.last_mode == "fresh" and len(source.buffer) == 4
    calls, parses = len(fake_generate.calls), len(parser.calls)
    buffered = {ex.text for ex in source.buffer.examples()}
    # decreasing schedule at the end of training: no fresh share left, so every step replays
    for _ in range(5):
        replay = source.prepare(batch, None, progress=1.0)
        assert source.last_mode == "replay" and replay.size == batch.size
        assert set(replay.texts) <= buffered and "word" in replay.grids
    assert len(fake_generate.calls) == calls and len(parser.calls) == parses
    # at the start of training the fresh share is the whole threshold
    source.prepare(batch, None, progress=0.0)
    assert source.last_mode == "fresh" and len(fake_generate.calls) == calls + 1
    assert first.texts == [p + r for p, r in zip(PROMPTS, fake_generate.responses)]


def test_empty_generations_are_skipped(tokenizers, fake_generate):
    dm, _ = make_dm(tokenizers)
    batch = data_batch(dm)
    source = StudentGeneratedData(dm, init_threshold=1.0)
    fake_generate.responses = ["", "", "", ""]
    assert source.prepare(batch, None) is None and source.last_mode == "original"
    assert len(source.buffer) == 0
    fake_generate.responses = ["", "kept one", "", "kept two"]
    new = source.prepare(batch, None)
    assert new.texts == [PROMPTS[1] + "kept one", PROMPTS[3] + "kept two"] and len(source.buffer) == 2


def test_source_state_round_trip(tokenizers, fake_generate):
    dm, _ = make_dm(tokenizers)
    batch = data_batch(dm)
    source = StudentGeneratedData(dm, init_threshold=0.5, seed=2)
    for x in [3.0, 3.2]:
        source.update_threshold(x)
    for _ in range(6):
        source.prepare(batch, None)
    raw = io.BytesIO()
    torch.save(source.state_dict(), raw)
    raw.seek(0)
    other = StudentGeneratedData(dm, init_threshold=0.0, seed=9)
    other.load_state_dict(torch.load(raw, weights_only=True))
    assert other.threshold == source.threshold == pytest.approx(0.6) and other.reference_loss == 3.2
    assert other.buffer.examples() == source.buffer.examples()
    # the same draws from here on
    for _ in range(8):
        a, b = source.prepare(batch, None), other.prepare(batch, None)
        assert source.last_mode == other.last_mode and (a is None) == (b is None)


# ----------------------------------------------------------------------------- pipeline runs
def test_kd_run_with_onpolicy_fills_the_buffer_and_checkpoints_it(tmp_path):
    from distillkit.pipeline import train

    cfg = compose_cfg(
        SMALL
        + [
            "callbacks=none",
            "method=kd",
            "onpolicy.enabled=true",
            "onpolicy.init_threshold=1.0",
            "onpolicy.max_new_tokens=8",
            "trainer.val_check_interval=2",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    source = out["module"].batch_source
    assert isinstance(source, StudentGeneratedData) and source in out["trainer"].callbacks
    assert source.generated_batches == 3 and 0 < len(source.buffer) <= 3 * cfg.data.batch_size
    assert all(ex.index < 0 for ex in source.buffer.examples())
    metrics = out["metrics"]
    assert metrics["onpolicy/used"] == 1.0 and metrics["onpolicy/threshold"] == 1.0
    assert metrics["onpolicy/buffer"] == len(source.buffer)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    # DistiLLM's defaults: the student's dev CE is monitored, and was measured before training
    assert source.monitor == "dev_ce" and source.eval_before_training and source.generated_eos == "strip"
    assert torch.isfinite(torch.tensor(metrics["val/student_ce"])) and source.reference_loss is not None
    eos = out["datamodule"].student_tokenizer.eos_token_id
    assert all(
        eos not in ex.student.labels and ex.student.input_ids[-1] != eos for ex in source.buffer.examples()
    )
    # the buffer and the threshold travel in the checkpoint
    path = tmp_path / "onpolicy.ckpt"
    out["trainer"].save_checkpoint(str(path))
    state = torch.load(path, weights_only=False)["callbacks"][source.state_key]
    fresh = StudentGeneratedData(out["datamodule"], init_threshold=0.0)
    fresh.load_state_dict(state)
    assert fresh.threshold == 1.0 and fresh.buffer.examples() == source.buffer.examples()


def test_onpolicy_off_by_default_and_bad_settings_fail_before_loading(tmp_path):
    from distillkit.pipeline import train

    cfg = compose_cfg(SMALL + ["callbacks=none"], tmp_path)
    assert cfg.onpolicy.enabled is False
    bad = compose_cfg(SMALL + ["callbacks=none", "onpolicy.enabled=true", "onpolicy.top_p=2.0"], tmp_path)
    with pytest.raises(ValueError, match="onpolicy.top_p=2.0"):
        train(bad, tmp_path)


def test_mta_run_parses_generated_texts_outside_the_training_step(tmp_path, monkeypatch):
    from distillkit.module import DistillModule
    from distillkit.pipeline import train
    from distillkit.spans.parsers import WordSpanParser

    inside = {"step": False}
    calls: list[tuple[int, bool]] = []
    real_parse, real_step = WordSpanParser.parse, DistillModule.training_step

    def parse(self, texts):
        calls.append((len(texts), inside["step"]))
        return real_parse(self, texts)

    def training_step(self, *args, **kwargs):
        inside["step"] = True
        try:
            return real_step(self, *args, **kwargs)
        finally:
            inside["step"] = False

    monkeypatch.setattr(WordSpanParser, "parse", parse)
    monkeypatch.setattr(DistillModule, "training_step", training_step)
    cfg = compose_cfg(
        SMALL
        + [
            "callbacks=none",
            "method=mta",
            "span_parser=words",
            "onpolicy.enabled=true",
            "onpolicy.init_threshold=1.0",
            "onpolicy.max_new_tokens=8",
            "onpolicy.seed=1",
        ],
        tmp_path,
    )
    out = train(cfg, tmp_path)
    source = out["module"].batch_source
    assert not any(in_step for _, in_step in calls)
    # after data preparation: exactly one parser call per generated batch, over its kept texts
    generated = calls[-source.generated_batches :]
    assert source.generated_batches == 3 and all(n <= cfg.data.batch_size for n, _ in generated)
    assert sum(n for n, _ in generated) == len(source.buffer)
    assert all("word" in ex.grids and "phrase" in ex.grids for ex in source.buffer.examples())
