"""The LightningDataModule: rows -> prompts -> each model's tokenization -> spans -> batches."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from distillkit.data.encode import Encoded, Example, encode, fits, prompt_frame
from distillkit.data.sources import SourceReport, load_splits
from distillkit.data.template import format_prompt, references
from distillkit.types import Batch, SideBatch, SpanGrid, TokenPairs

log = logging.getLogger(__name__)

#: An annotator adds span memberships to examples during data preparation (never in the step).
Annotator = Callable[[list[Example]], dict[str, Any]]


class EpochSeededSampler(DistributedSampler):
    """A shuffle that depends only on (seed, epoch), never on the world size, resumable at any position.

    The global order of epoch ``e`` is ``randperm(n)`` under a generator seeded with
    ``seed * 100_003 + e``. With ``num_replicas`` processes (DDP), rank ``r`` takes positions
    ``r, r + W, r + 2W, ...`` of that order (padded at the end with its first indices, as torch's
    ``DistributedSampler`` does, so every rank has the same number of batches). Step ``k`` of the
    ``W`` ranks with ``batch_size = b`` each therefore holds exactly positions ``[k·W·b, (k+1)·W·b)`` of
    the global order: the global batch one process with ``batch_size = W·b`` gets at step ``k``.

    It is a ``DistributedSampler`` so that Lightning leaves it in place under DDP instead of wrapping it in
    its ``DistributedSamplerWrapper`` (which re-shuffles the wrapped order with its own seed and makes the
    order depend on the world size). :meth:`DistillDataModule.train_dataloader` passes the trainer's
    ``distributed_sampler_kwargs`` (``num_replicas``, ``rank``); one process is ``num_replicas=1``.

    Checkpointing goes through torchdata's ``StatefulDataLoader`` (which Lightning saves with the loop
    state): the sampler's state is its epoch, the state of its iterator (:class:`_EpochOrder`) the
    epoch and the number of indices it has handed out, so a resume continues the same order at the
    same position instead of replaying the epoch from its start. Under DDP every rank hands out the
    same number of indices per step, so rank 0's saved position is every rank's position.
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of {num_replicas} replicas")
        # not DistributedSampler.__init__ (it asks torch.distributed for defaults): only its attributes
        self.dataset, self.n, self.seed, self.epoch = range(n), n, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.drop_last = True, False
        self.num_samples = math.ceil(n / num_replicas) if n else 0
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of each epoch
        self.epoch = epoch

    def global_order(self, epoch: int) -> list[int]:
        """The epoch's order over all ranks (the same for every world size)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def order(self, epoch: int) -> list[int]:
        """This rank's share of :meth:`global_order`: positions ``rank::num_replicas`` (padded)."""
        order = self.global_order(epoch)
        if self.num_replicas == 1:
            return order
        padded = order + (order * self.num_replicas)[: self.total_size - self.n]
        return padded[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> _EpochOrder:
        return _EpochOrder(self)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])


class _EpochOrder(Iterator[int]):
    """One pass over :meth:`EpochSeededSampler.order`. The order is drawn at the first ``next`` (not at
    ``iter``), since Lightning creates the iterator before it calls ``set_epoch``."""

    def __init__(self, sampler: EpochSeededSampler):
        self.sampler = sampler
        self.epoch: int | None = None
        self.position = 0
        self._order: list[int] | None = None

    def _start(self, epoch: int) -> list[int]:
        self.epoch, self._order = epoch, self.sampler.order(epoch)
        return self._order

    def __iter__(self) -> _EpochOrder:
        return self

    def __next__(self) -> int:
        order = self._order if self._order is not None else self._start(self.sampler.epoch)
        if self.position >= len(order):
            raise StopIteration
        self.position += 1
        return order[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        epoch = self.epoch if self.epoch is not None else self.sampler.epoch
        return {"epoch": epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start(int(state["epoch"]))
        self.position = int(state["position"])


def _pad(seqs: list[list[Any]], value: Any, length: int) -> list[list[Any]]:
    return [list(s) + [value] * (length - len(s)) for s in seqs]


def collate_side(encs: list[Encoded]) -> SideBatch:
    """Right-padded tensors of one model's view."""
    length = max(len(e.input_ids) for e in encs)
    input_ids = torch.tensor(_pad([e.input_ids for e in encs], 0, length))
    attention = torch.tensor(_pad([[1] * len(e.input_ids) for e in encs], 0, length))
    labels = torch.tensor(_pad([e.labels for e in encs], -100, length))
    offsets = torch.tensor(_pad([e.offsets for e in encs], (0, 0), length), dtype=torch.long)
    return SideBatch(input_ids, attention, labels, offsets.view(len(encs), length, 2))


def collate_pairs(per_example: list[list[tuple[int, int]]]) -> TokenPairs:
    """Padded ``(B, P)`` position tensors of 1:1 token pairs; padded pairs point at 0 and are masked."""
    P = max((len(p) for p in per_example), default=0)
    s = torch.zeros(len(per_example), P, dtype=torch.long)
    t = torch.zeros(len(per_example), P, dtype=torch.long)
    mask = torch.zeros(len(per_example), P, dtype=torch.bool)
    for b, pairs in enumerate(per_example):
        if pairs:
            s[b, : len(pairs)] = torch.tensor([a for a, _ in pairs])
            t[b, : len(pairs)] = torch.tensor([c for _, c in pairs])
            mask[b, : len(pairs)] = True
    return TokenPairs(s, t, mask)


def collate(examples: list[Example]) -> Batch:
    from distillkit.spans.membership import collate_membership

    shared = all(ex.student is ex.teacher for ex in examples)
    student = collate_side([ex.student for ex in examples])
    teacher = student if shared else collate_side([ex.teacher for ex in examples])
    grids = {}
    for n in sorted({n for ex in examples for n in ex.grids}):
        units = [ex.grids.get(n, ([], [])) for ex in examples]
        s_mem = collate_membership([u[0] for u in units], student.input_ids.shape[1])
        same = shared and all(u[0] is u[1] or u[0] == u[1] for u in units)
        t_mem = s_mem if same else collate_membership([u[1] for u in units], teacher.input_ids.shape[1])
        grids[n] = SpanGrid(s_mem, t_mem)
    pairs = {
        n: collate_pairs([ex.pairs.get(n, []) for ex in examples])
        for n in sorted({n for ex in examples for n in ex.pairs})
    }
    return Batch(
        student=student,
        teacher=teacher,
        texts=[ex.text for ex in examples],
        prompt_chars=[ex.prompt_chars for ex in examples],
        index=torch.tensor([ex.index for ex in examples]),
        grids=grids,
        pairs=pairs,
        num_tokens=sum(len(ex.student.input_ids) for ex in examples),
    )


class DistillDataModule(L.LightningDataModule):
    """Builds examples once (``setup``) for both tokenizers; annotators add spans once."""

    def __init__(
        self,
        cfg: Any,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        annotators: list[Annotator] | None = None,
        shared_tokenizer: bool = False,
        row_transforms: list[Callable[[str, list[dict], Any], list[dict]]] | None = None,
    ):
        super().__init__()
        #: applied to each split's rows before tokenization (SeqKD: the teacher's responses)
        self.row_transforms = list(row_transforms or [])
        self.cfg = cfg
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.shared = shared_tokenizer
        self.annotators = annotators or []
        self.examples: dict[str, list[Example]] = {}
        self.rows: dict[str, list[dict]] = {}
        self.report: dict[str, Any] = {}
        self._ready = False

    def __getstate__(self) -> dict[str, Any]:
        """``ddp_spawn`` pickles the prepared datamodule into each process: the row transforms ran in
        :meth:`setup` (SeqKD's holds the teacher generator) and do not travel; the annotators do (they
        are picklable partials), for the on-policy data annotated in the step's process."""
        state = dict(self.__dict__)
        if state.get("_ready"):
            state["row_transforms"] = []
        return state

    # -- preparation ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        splits, source_report = load_splits(self.cfg)
        self.report = {"source": source_report.as_dict(), "filtered": {}, "annotations": {}}
        for split, rows in splits.items():
            for transform in self.row_transforms:
                rows = transform(split, rows, self.cfg)
            kept_rows, examples = self._encode_split(split, rows, source_report)
            self.rows[split] = kept_rows
            self.examples[split] = examples
        for annotate in self.annotators:
            for split, examples in self.examples.items():
                if examples and split in ("train", "dev"):  # the test split is only generated from
                    stats = annotate(examples)
                    self.report["annotations"].setdefault(split, {}).update(stats or {})
        self._ready = True
        log.info("data: %s", {k: len(v) for k, v in self.examples.items()})

    def _encode_split(
        self, split: str, rows: list[dict], report: SourceReport
    ) -> tuple[list[dict], list[Example]]:
        cfg = self.cfg
        kept_rows, examples, too_long = [], [], 0
        for row in rows:
            prompt = format_prompt(row, cfg.template, tokenizer=self.teacher_tokenizer)
            refs = references(row)
            example = self.encode_example(len(examples), prompt, refs[0], refs)
            if example is None:
                too_long += 1
                continue
            examples.append(example)
            kept_rows.append(row)
        self.report["filtered"][split] = {"too_long": too_long, "kept": len(examples)}
        if too_long:
            log.info(
                "data/%s: dropped %d of %d rows over %d prompt / %d total tokens",
                split,
                too_long,
                len(rows),
                cfg.max_prompt_tokens,
                cfg.max_total_tokens,
            )
        return kept_rows, examples

    def encode_example(self, index: int, prompt: str, response: str, refs: list[str]) -> Example | None:
        """``prompt + response`` tokenized by both models (shared when they share a tokenizer), or
        ``None`` when either side is over the length limits (dropped, never truncated)."""
        cfg = self.cfg
        # the prompt was rendered with the teacher's tokenizer: its template's control tokens (chat) stay
        # control tokens on both sides, every row character is text (distillkit.data.encode)
        frame = self.prompt_frame
        s_enc = encode(self.student_tokenizer, prompt, response, frame)
        t_enc = s_enc if self.shared else encode(self.teacher_tokenizer, prompt, response, frame)
        if not (
            fits(s_enc, cfg.max_prompt_tokens, cfg.max_total_tokens)
            and fits(t_enc, cfg.max_prompt_tokens, cfg.max_total_tokens)
        ):
            return None
        return Example(index, prompt + response, len(prompt), refs, s_enc, t_enc)

    @property
    def prompt_frame(self) -> Any:
        """The template's :class:`~distillkit.data.encode.PromptFrame` (``None`` unless it adds control tokens)."""
        if not hasattr(self, "_prompt_frame"):
            self._prompt_frame = prompt_frame(getattr(self.cfg, "template", None), self.teacher_tokenizer)
        return self._prompt_frame

    def make_examples(self, prompts: list[str], responses: list[str], first_index: int = 0) -> list[Example]:
        """Examples of new (prompt, response) pairs, e.g. student generations (``distillkit.data.onpolicy``),
        encoded exactly as :meth:`setup` encodes the data; pairs over the length limits are dropped.
        Example ``i`` gets index ``first_index + i``. They carry no spans yet: see :meth:`annotate`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; need one each")
        made = (
            self.encode_example(first_index + i, p, r, [r])
            for i, (p, r) in enumerate(zip(prompts, responses))
        )
        return [ex for ex in made if ex is not None]

    def annotate(self, examples: list[Example]) -> dict[str, Any]:
        """Runs every annotator once over ``examples`` (one batched call each); their merged stats."""
        stats: dict[str, Any] = {}
        for annotate in self.annotators:
            stats.update(annotate(examples) or {})
        return stats

    # -- loaders --------------------------------------------------------------------------------
    def _trainer(self) -> Any:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a trainer (tests, scripts)
            return None

    def loader_options(self) -> dict[str, Any]:
        """``num_workers`` and ``pin_memory`` of every loader (:func:`loader_settings` on the trainer's
        accelerator and devices per node; one CPU process without a trainer)."""
        trainer = self._trainer()
        on_gpu = trainer is not None and type(trainer.accelerator).__name__ == "CUDAAccelerator"
        local = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
        return loader_settings(self.cfg, on_gpu=on_gpu, local_processes=local)

    def train_dataloader(self) -> StatefulDataLoader:
        """A ``StatefulDataLoader`` (torchdata): Lightning checkpoints its state with the loop, so a
        resume at any step continues the epoch's order where it stopped. Its sampler is this rank's
        share of the world-size-independent order (:class:`EpochSeededSampler`, from the trainer's
        ``distributed_sampler_kwargs``). The loader's own generator (seeded by ``shuffle_seed``) keeps
        the per-iterator seed draw off the global RNG."""
        import warnings

        examples = self.examples["train"]
        trainer = self._trainer()
        shard = (getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None) or {}
        sampler = EpochSeededSampler(
            len(examples),
            self.cfg.shuffle_seed,
            num_replicas=int(shard.get("num_replicas", 1)),
            rank=int(shard.get("rank", 0)),
        )
        with warnings.catch_warnings():  # torchdata 0.11 calls torch's deprecated set_vital in __init__
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            return StatefulDataLoader(
                examples,
                batch_size=self.cfg.batch_size,
                sampler=sampler,
                collate_fn=collate,
                drop_last=False,
                generator=torch.Generator().manual_seed(int(self.cfg.shuffle_seed)),
                **self.loader_options(),
            )

    def val_dataloader(self) -> DataLoader | list:
        examples = self.examples.get("dev") or []
        if not examples:
            return []
        return DataLoader(
            examples,
            batch_size=self.cfg.eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            **self.loader_options(),
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return (
            batch.to(device)
            if isinstance(batch, Batch)
            else super().transfer_batch_to_device(batch, device, dataloader_idx)
        )


#: worker processes per training process on a GPU when ``data.num_workers`` is unset (batches are
#: tokenized and annotated in data preparation: a worker only collates)
GPU_WORKERS = 4


def loader_settings(
    cfg: Any, *, on_gpu: bool, local_processes: int = 1, cpus: int | None = None
) -> dict[str, Any]:
    """The loaders' ``num_workers`` and ``pin_memory``: ``data.num_workers`` / ``data.pin_memory`` when
    set; unset (``null``), on a GPU ``min(GPU_WORKERS, cpus // local_processes - 1)`` workers and pinned
    memory (so ``Batch.to(device, non_blocking=True)`` copies asynchronously), on a CPU no worker
    process (collating pre-tokenized examples is cheaper than shipping them between processes) and
    no pinning."""
    import os

    workers = cfg.get("num_workers") if hasattr(cfg, "get") else getattr(cfg, "num_workers", None)
    pin = cfg.get("pin_memory") if hasattr(cfg, "get") else getattr(cfg, "pin_memory", None)
    if workers is None:
        if on_gpu:
            if cpus is None:
                cpus = (
                    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                )
            workers = max(0, min(GPU_WORKERS, cpus // max(local_processes, 1) - 1))
        else:
            workers = 0
    return {"num_workers": int(workers), "pin_memory": bool(on_gpu if pin is None else pin)}
