"""On-policy data: DistiLLM's adaptive student-generated outputs (SGO) with a replay buffer.

A generic source of student-generated training data that any method can train on (DistiLLM's
adaptive SGO is the MTA paper's base KD on same-tokenizer pairs, papers.md §2.5; GKD-, DistiLLM-2-
or MiniLLM-style methods can reuse it). It is a Lightning callback that the pipeline also sets as
``DistillModule.batch_source``; ``training_step`` asks it for the batch to train on.

What happens at each training step (:meth:`StudentGeneratedData.on_train_batch_start`, outside
``training_step``), as DistiLLM's ``finetune.py`` does it (read from jongwooko/distillm):

1. draw ``u ~ U(0, 1)`` from the source's own seeded RNG;
2. ``u >= threshold``: train on the original batch;
3. ``u < threshold * replay_schedule(progress)``, or ``u < threshold`` while the buffer is not yet
   full: **fresh** student generations. The student samples a response to each prompt of the batch
   (``text[:prompt_chars]``), the (prompt, response) pairs are tokenized by BOTH models exactly as the
   data module tokenizes its data, span-annotated by the data module's annotators in one batched call
   (spans are parsed when texts enter the buffer, never in the loss), pushed into the replay buffer,
   and the step trains on them;
4. otherwise (``u < threshold``, buffer full): **replay**, a batch of the same size sampled from the
   buffer.

``replay_schedule`` is DistiLLM's ``replay_ratio``: ``decreasing`` (its default) ``1 - progress``,
``constant`` ``0.5``, ``increasing`` ``progress``, with ``progress = global_step / total steps``.

The adaptive threshold (DistiLLM's rule as read in its ``finetune.py``): it starts at
``init_threshold``; the first monitored value becomes the reference; after each later validation,
``if value >= reference + loss_eps: threshold = min(threshold + 0.1, 1.0); reference = value``.
The reference moves only when the threshold rises, so a slow drift of the value upwards also raises it.

What is monitored (``monitor``), and when the reference is taken, follow DistiLLM by default
(``finetune.py``: ``prev_avg_loss = evaluate(...)`` before the first epoch, then ``evaluate`` at every
``eval_interval``, which returns the student's language-model cross-entropy on the dev set):

* ``monitor=dev_ce`` (default): the student's plain cross-entropy on the dev response tokens (+EOS),
  ``Σ_tokens -log q(y_t) / #tokens`` over the whole dev set, logged as ``val/student_ce``. It is computed
  here from one student forward per dev batch (no method term involved, so it means the same for every
  method); DistiLLM averages per-batch means instead, equal when the batches hold equally many tokens.
  ``monitor=val_loss``: the method's weighted validation loss ``val/loss`` (distillkit before issue 9;
  for MTA at kd_rate 1 that is SRKL + w_span·(DSA + HRA/10), not a language-model loss).
* ``eval_before_training=true`` (default): the reference is measured on the dev set before the first
  training step, so the first validation can already raise the threshold. ``false``: the first
  validation only sets the reference (distillkit before issue 9). A resumed run keeps its reference.

Generated samples (``generated_eos``): DistiLLM strips the pad (= EOS) of every generated sequence
(``distillm/sampler.py``), so a generated sample carries no EOS: ``strip`` (default) has no EOS token
and no EOS label, the last response token predicts nothing. ``keep``: the EOS is appended and trained
on as in the data (distillkit before issue 9; it keeps teaching the student to stop, also after
generations cut at ``max_new_tokens``). ``distillm``: DistiLLM's exact trained positions: its sampler
writes unshifted labels, so it distils the last response token's position (the stop decision, labelled
EOS here) and not the one before the first response token
(:func:`distillkit.data.encode.distillm_positions`; docs/fidelity.md).

The buffer, the threshold, its reference loss and the RNG states are saved in the checkpoint through
the callback's ``state_dict`` and restored on resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

from distillkit.data.datamodule import DistillDataModule, collate
from distillkit.data.encode import Encoded, Example, distillm_positions, eos_id, strip_eos
from distillkit.types import Batch
from distillkit.utils.io import stable_hash

log = logging.getLogger(__name__)

#: DistiLLM's ``replay_ratio``: the share of the threshold spent on fresh generations, by progress
REPLAY_SCHEDULES = ("decreasing", "constant", "increasing")
#: what one step trains on
MODES = ("original", "fresh", "replay")
#: the threshold rises by this much when the validation loss rose (DistiLLM)
THRESHOLD_STEP = 0.1
#: what the threshold rule watches: the student's dev CE (DistiLLM) or the method's val/loss
MONITORS = ("dev_ce", "val_loss")
#: the logged metric of each monitor
MONITOR_METRICS = {"dev_ce": "val/student_ce", "val_loss": "val/loss"}
#: generated samples' EOS: stripped (DistiLLM), kept as a target, or DistiLLM's exact trained positions
GENERATED_EOS = ("strip", "keep", "distillm")


# ----------------------------------------------------------------------------- replay buffer
def _example_to_state(ex: Example) -> dict[str, Any]:
    """Plain Python containers only, so checkpoints load with ``torch.load(weights_only=True)``."""
    state = dataclasses.asdict(ex)
    state["shared"] = ex.teacher is ex.student
    if state["shared"]:
        del state["teacher"]
    return state


def _example_from_state(state: Mapping[str, Any]) -> Example:
    def side(s: Mapping[str, Any]) -> Encoded:
        return Encoded(
            input_ids=list(s["input_ids"]),
            labels=list(s["labels"]),
            offsets=[tuple(o) for o in s["offsets"]],
            valid=list(s["valid"]),
            prompt_len=int(s["prompt_len"]),
        )

    student = side(state["student"])
    teacher = student if state["shared"] else side(state["teacher"])
    grids = {name: (list(s), list(t)) for name, (s, t) in state["grids"].items()}
    pairs = {name: [tuple(p) for p in ps] for name, ps in state["pairs"].items()}
    return Example(
        index=int(state["index"]),
        text=state["text"],
        prompt_chars=int(state["prompt_chars"]),
        references=list(state["references"]),
        student=student,
        teacher=teacher,
        grids=grids,
        pairs=pairs,
    )


class ReplayBuffer:
    """A first-in first-out store of ready :class:`~distillkit.data.encode.Example` s (tokenized by
    both models and span-annotated) with its own seeded sampling RNG.

    At ``capacity`` the oldest examples are evicted first. :meth:`sample` draws without replacement.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ReplayBuffer capacity={capacity!r}; must be an integer >= 1")
        self.capacity = capacity
        self.seed = seed
        self._items: deque[Example] = deque(maxlen=capacity)
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, examples: Iterable[Example]) -> None:
        """Appends ``examples`` in order; the oldest ones leave once the buffer is at capacity."""
        self._items.extend(examples)

    def sample(self, n: int) -> list[Example]:
        """``n`` distinct examples drawn uniformly with the buffer's own RNG."""
        if n < 1 or n > len(self._items):
            raise ValueError(f"cannot sample n={n} examples from a replay buffer holding {len(self._items)}")
        return self._rng.sample(list(self._items), n)

    def examples(self) -> list[Example]:
        """The buffered examples, oldest first."""
        return list(self._items)

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "rng": self._rng.getstate(),
            "items": [_example_to_state(ex) for ex in self._items],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.seed = state["seed"]
        self._items = deque((_example_from_state(s) for s in state["items"]), maxlen=self.capacity)
        self._rng.setstate(_as_tuples(state["rng"]))


def _as_tuples(x: Any) -> Any:
    """``random.Random.setstate`` needs tuples; a serializer may have turned them into lists."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- the adaptive rule
def next_threshold(
    threshold: float, reference: float | None, val_loss: float, loss_eps: float
) -> tuple[float, float]:
    """DistiLLM's adaptive threshold after one validation: ``(threshold, reference loss)``.

    The first validation only sets the reference. Afterwards, a validation loss at least
    ``loss_eps`` above the reference raises the threshold by 0.1 (capped at 1.0) and becomes the new
    reference; otherwise nothing changes.
    """
    if reference is None:
        return threshold, val_loss
    if val_loss >= reference + loss_eps:
        return min(threshold + THRESHOLD_STEP, 1.0), val_loss
    return threshold, reference


def replay_share(schedule: str, progress: float) -> float:
    """The fraction of the threshold spent on fresh generations once the buffer is full."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "decreasing":
        return 1.0 - progress
    if schedule == "constant":
        return 0.5
    if schedule == "increasing":
        return progress
    raise ValueError(f"replay_ratio={schedule!r}; valid: {', '.join(REPLAY_SCHEDULES)}")


def choose_mode(u: float, threshold: float, fresh_share: float, buffer_full: bool) -> str:
    """What a step trains on, from DistiLLM's draw ``u`` (see the module docstring)."""
    if u >= threshold:
        return "original"
    if u < threshold * fresh_share or not buffer_full:
        return "fresh"
    return "replay"


# ----------------------------------------------------------------------------- the callback
class StudentGeneratedData(L.Callback):
    """DistiLLM's adaptive student-generated outputs as a batch source (see the module docstring).

    ``datamodule`` supplies both tokenizers, the length limits (``cfg.max_prompt_tokens``,
    ``cfg.max_total_tokens``) and the annotators. Generation samples with ``temperature``/``top_k``/
    ``top_p`` (DistiLLM: 1.0 / 0 / 1.0) and at most ``max_new_tokens`` new tokens, within the data's
    ``max_total_tokens``. Pairs that come out empty or too long are skipped; when none survive the
    step keeps its original batch.
    """

    def __init__(
        self,
        datamodule: DistillDataModule,
        *,
        init_threshold: float = 0.0,
        loss_eps: float = 0.1,
        capacity: int = 1000,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        replay_ratio: str = "decreasing",
        monitor: str = "dev_ce",
        eval_before_training: bool = True,
        generated_eos: str = "strip",
    ):
        check_settings(
            init_threshold=init_threshold,
            loss_eps=loss_eps,
            capacity=capacity,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            replay_ratio=replay_ratio,
            monitor=monitor,
            eval_before_training=eval_before_training,
            generated_eos=generated_eos,
        )
        batch_size = int(datamodule.cfg.batch_size)
        if capacity < batch_size:
            raise ValueError(
                f"onpolicy.capacity={capacity} is below data.batch_size={batch_size}: a replayed batch "
                "could not be drawn; raise the capacity"
            )
        self.datamodule = datamodule
        self.loss_eps = float(loss_eps)
        self.max_new_tokens = int(max_new_tokens)
        self.generation = {"temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}
        self.seed = int(seed)
        self.replay_ratio = replay_ratio
        self.monitor = monitor
        self.eval_before_training = bool(eval_before_training)
        self.generated_eos = generated_eos
        self._ce_sum: torch.Tensor | None = None  # this validation's student CE: token sum and count
        self._ce_count: torch.Tensor | None = None
        self.buffer = ReplayBuffer(int(capacity), seed=self.seed)
        self.threshold = float(init_threshold)
        self.reference_loss: float | None = None
        self.generated_batches = 0  # also the generation seed counter
        self.last_mode = "original"
        self._rng = random.Random(stable_hash("onpolicy-draws", self.seed))
        self._pending: Batch | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], datamodule: DistillDataModule) -> StudentGeneratedData:
        """From the ``onpolicy`` config block (``enabled`` is the caller's business)."""
        settings = {k: v for k, v in dict(cfg).items() if k != "enabled"}
        return cls(datamodule, **settings)

    # -- the adaptive threshold ------------------------------------------------------------------
    def update_threshold(self, val_loss: float) -> float:
        """Applies :func:`next_threshold` after one validation; returns the new threshold."""
        self.threshold, self.reference_loss = next_threshold(
            self.threshold, self.reference_loss, float(val_loss), self.loss_eps
        )
        return self.threshold

    def _observe(self, value: float) -> None:
        before = self.threshold
        self.update_threshold(value)
        if self.threshold != before:
            log.info(
                "onpolicy: %s rose to %.4f; threshold %.2f -> %.2f",
                MONITOR_METRICS[self.monitor],
                value,
                before,
                self.threshold,
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor != "val_loss":
            return
        value = trainer.callback_metrics.get(MONITOR_METRICS["val_loss"])
        if value is None:
            log.warning("onpolicy: no val/loss after validation; the threshold stays %.2f", self.threshold)
            return
        self._observe(float(value))

    # -- the student's dev cross-entropy (monitor=dev_ce) --------------------------------------
    @staticmethod
    def student_ce_sums(pl_module: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ -log q(y_t), #tokens)`` of the student over the batch's labelled (response + EOS) tokens:
        one student forward, float32 log-softmax over the tokenizer's real vocabulary."""
        side = batch.student
        with torch.no_grad():
            logits = pl_module.student(
                input_ids=side.input_ids, attention_mask=side.attention_mask, use_cache=False
            ).logits
            vocab = getattr(pl_module, "student_vocab", None)
            if vocab is not None:
                logits = logits[..., :vocab]
            labels = side.labels.to(logits.device)
            total = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            return total, (labels != -100).sum()

    def dev_ce(self, pl_module: Any, batches: Iterable[Batch], device: Any = None) -> float:
        """The student's dev CE over ``batches`` (moved to ``device``), in eval mode."""
        was_training = pl_module.student.training
        pl_module.student.eval()
        total = count = 0.0
        try:
            for batch in batches:
                if device is not None:
                    batch = batch.to(device)
                s, n = self.student_ce_sums(pl_module, batch)
                total, count = total + float(s), count + float(n)
        finally:
            pl_module.student.train(was_training)
        if count == 0:
            raise ValueError("onpolicy: the dev set has no labelled token; the student's dev CE is undefined")
        return total / count

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """DistiLLM's evaluation before training: the reference of the threshold rule (not on resume)."""
        if not self.eval_before_training or self.reference_loss is not None:
            return
        # every rank measures the whole dev set itself (the same value everywhere, no collective needed)
        dm = getattr(trainer, "datamodule", None) or self.datamodule
        loader = dm.val_dataloader()
        if not loader:
            log.warning(
                "onpolicy: eval_before_training but no dev set; the first validation sets the reference"
            )
            return
        with _forward_context(trainer):
            if self.monitor == "dev_ce":
                value = self.dev_ce(pl_module, loader, pl_module.device)
            else:  # the method's weighted loss, as validation_step computes it (mean over batches by size)
                value = _val_loss(pl_module, loader)
        self.update_threshold(value)
        log.info("onpolicy: %s before training %.4f (reference)", MONITOR_METRICS[self.monitor], value)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ce_sum = self._ce_count = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self.monitor != "dev_ce" or not isinstance(batch, Batch):
            return
        with _forward_context(trainer):  # the precision validation_step runs under (bf16 autocast, ...)
            s, n = self.student_ce_sums(pl_module, batch)  # tensors: no host sync inside the loop
        self._ce_sum = s if self._ce_sum is None else self._ce_sum + s
        self._ce_count = n if self._ce_count is None else self._ce_count + n

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor != "dev_ce" or self._ce_sum is None:
            return
        total = trainer.strategy.reduce(self._ce_sum.detach().float(), reduce_op="sum")
        count = trainer.strategy.reduce(self._ce_count.detach().float(), reduce_op="sum")
        self._ce_sum = self._ce_count = None
        if float(count) == 0:
            log.warning("onpolicy: no labelled dev token; the threshold stays %.2f", self.threshold)
            return
        value = total / count
        pl_module.log(MONITOR_METRICS["dev_ce"], value, prog_bar=False, sync_dist=False)
        self._observe(float(value))

    # -- one step --------------------------------------------------------------------------------
    def prepare(self, batch: Batch, student: torch.nn.Module, progress: float = 0.0) -> Batch | None:
        """Decides what this step trains on and builds it; ``None`` keeps the original batch.

        The result is collated on the device of ``batch``. :attr:`last_mode` tells which way it went
        (``original``, ``fresh``, ``replay``; ``fresh`` falls back to ``original`` when no generation
        survives).
        """
        u = self._rng.random()
        mode = choose_mode(u, self.threshold, replay_share(self.replay_ratio, progress), self.buffer.full)
        replacement = None
        if mode == "fresh":
            examples = self.generate(batch, student)
            if examples:
                self.buffer.push(examples)
                replacement = collate(examples)
            else:
                mode = "original"
        elif mode == "replay":
            replacement = collate(self.buffer.sample(batch.size))
        self.last_mode = mode
        return replacement.to(batch.student.input_ids.device) if replacement is not None else None

    def generate(self, batch: Batch, student: torch.nn.Module) -> list[Example]:
        """Student responses to the batch's prompts as annotated examples (empty/too-long ones dropped)."""
        from distillkit.eval.generate import generate_responses

        dm = self.datamodule
        prompts = [text[:chars] for text, chars in zip(batch.texts, batch.prompt_chars)]
        responses = generate_responses(
            student,
            dm.student_tokenizer,
            prompts,
            seed=int(stable_hash("onpolicy-generate", self.seed, self.generated_batches), 16) % (2**31),
            do_sample=True,
            no_repeat_ngram_size=0,
            max_prompt_tokens=int(dm.cfg.max_prompt_tokens),
            max_total_tokens=int(dm.cfg.max_total_tokens),
            max_new_tokens=self.max_new_tokens,
            batch_size=len(prompts),
            add_special_tokens=True,  # the prompt as the training examples tokenize it (encode.py)
            frame=dm.prompt_frame,  # ... with the same special-token splitting (encode.tokenize_text)
            **self.generation,
        )
        self.generated_batches += 1
        kept = [(p, r) for p, r in zip(prompts, responses) if r]
        if not kept:
            return []
        # negative indices tell generated examples from dataset rows
        first = -(self.generated_batches * len(prompts))
        examples = dm.make_examples([p for p, _ in kept], [r for _, r in kept], first_index=first)
        if self.generated_eos != "keep":  # DistiLLM: a generated sample carries no EOS token
            examples = [_without_eos(ex, self.generated_eos, dm) for ex in examples]
        if examples:
            dm.annotate(examples)  # one batched call per annotator: spans parsed once, here
        return examples

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        total = trainer.estimated_stepping_batches
        progress = trainer.global_step / total if total and math.isfinite(total) else 0.0
        self._pending = self.prepare(batch, pl_module.student, progress)
        size = batch.size
        pl_module.log("onpolicy/threshold", self.threshold, on_step=True, on_epoch=False, batch_size=size)
        pl_module.log(
            "onpolicy/buffer", float(len(self.buffer)), on_step=True, on_epoch=False, batch_size=size
        )
        used = float(self._pending is not None)
        pl_module.log("onpolicy/used", used, on_step=True, on_epoch=False, batch_size=size)

    def replace(self, batch: Batch, module: Any = None) -> Batch:
        """The batch prepared for this step (then forgotten), or ``batch`` when none was."""
        pending, self._pending = self._pending, None
        return pending if pending is not None else batch

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "reference_loss": self.reference_loss,
            "generated_batches": self.generated_batches,
            "rng": self._rng.getstate(),
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.threshold = float(state_dict["threshold"])
        self.reference_loss = state_dict["reference_loss"]
        self.generated_batches = int(state_dict["generated_batches"])
        self._rng.setstate(_as_tuples(state_dict["rng"]))
        self.buffer.load_state_dict(state_dict["buffer"])


def _without_eos(ex: Example, mode: str, dm: DistillDataModule) -> Example:
    if mode == "strip":
        student = strip_eos(ex.student)
        teacher = student if ex.teacher is ex.student else strip_eos(ex.teacher)
    else:  # "distillm"
        student = distillm_positions(ex.student, eos_id(dm.student_tokenizer))
        teacher = (
            student
            if ex.teacher is ex.student
            else distillm_positions(ex.teacher, eos_id(dm.teacher_tokenizer))
        )
    return dataclasses.replace(ex, student=student, teacher=teacher)


class _forward_context:
    """The trainer's precision context (autocast under bf16-mixed) around a forward outside a step."""

    def __init__(self, trainer: Any):
        plugin = getattr(getattr(trainer, "strategy", None), "precision_plugin", None)
        self._ctx = plugin.forward_context() if plugin is not None else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _val_loss(pl_module: Any, loader: Iterable[Batch]) -> float:
    """The method's weighted loss over ``loader``, averaged over batches weighted by their size (as
    Lightning averages ``val/loss``)."""
    total = weight = 0.0
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(pl_module.device)
                loss = pl_module.weighted_loss(pl_module.compute_terms(batch))
                total, weight = total + float(loss) * batch.size, weight + batch.size
    finally:
        pl_module.train(was_training)
    return total / max(weight, 1.0)


def check_settings(
    *,
    init_threshold: float,
    loss_eps: float,
    capacity: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    replay_ratio: str,
    monitor: str = "dev_ce",
    eval_before_training: bool = True,
    generated_eos: str = "strip",
    **_: Any,
) -> None:
    """Clear errors for bad ``onpolicy`` settings, before anything expensive runs."""
    for name, value in [
        ("init_threshold", init_threshold),
        ("loss_eps", loss_eps),
        ("temperature", temperature),
        ("top_p", top_p),
    ]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"onpolicy.{name}={value!r}; must be a number")
    checks = [
        ("init_threshold", init_threshold, 0.0 <= float(init_threshold) <= 1.0, "in [0, 1]"),
        ("loss_eps", loss_eps, float(loss_eps) >= 0.0, ">= 0"),
        ("capacity", capacity, isinstance(capacity, int) and capacity >= 1, "an integer >= 1"),
        (
            "max_new_tokens",
            max_new_tokens,
            isinstance(max_new_tokens, int) and max_new_tokens >= 1,
            "an integer >= 1",
        ),
        ("temperature", temperature, float(temperature) > 0.0, "> 0"),
        ("top_k", top_k, isinstance(top_k, int) and top_k >= 0, "an integer >= 0 (0: off)"),
        ("top_p", top_p, 0.0 < float(top_p) <= 1.0, "in (0, 1]"),
    ]
    for name, value, ok, valid in checks:
        if not ok:
            raise ValueError(f"onpolicy.{name}={value!r}; must be {valid}")
    if replay_ratio not in REPLAY_SCHEDULES:
        raise ValueError(f"onpolicy.replay_ratio={replay_ratio!r}; valid: {', '.join(REPLAY_SCHEDULES)}")
    if monitor not in MONITORS:
        raise ValueError(f"onpolicy.monitor={monitor!r}; valid: {', '.join(MONITORS)}")
    if not isinstance(eval_before_training, bool):
        raise ValueError(f"onpolicy.eval_before_training={eval_before_training!r}; must be true or false")
    if generated_eos not in GENERATED_EOS:
        raise ValueError(f"onpolicy.generated_eos={generated_eos!r}; valid: {', '.join(GENERATED_EOS)}")
