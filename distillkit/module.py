"""The LightningModule: one forward per model per step, typed outputs, named loss terms.

The teacher is frozen (eval mode, ``requires_grad=False``, forward under ``torch.no_grad()``,
outside the optimizer and left out of checkpoints: it is rebuilt from its own source on resume).
The student and the method's projectors train.

Under ``strategy=fsdp`` (FSDP2, :mod:`distillkit.strategies`) :meth:`configure_model` shards the teacher,
the student and the method as separate ``fully_shard`` units before the optimizer is built; the
optimizer is built from the (then sharded) trainable parameters only.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from distillkit.methods.base import Method
from distillkit.models.attention import capture_attention
from distillkit.models.handles import InputEmbedding, OutputHead
from distillkit.models.pair import LoadedModel, freeze
from distillkit.types import Batch, ModelOutput, Needs, SideBatch


def run_forward(
    model: nn.Module, side: SideBatch, needs: Needs, vocab_size: int, role: str = "model"
) -> ModelOutput:
    """One forward asking only for what ``needs`` declares: logits cut to the real vocabulary, only the
    named hidden states, only the named layers' attention (captured in the form asked for, see
    :mod:`distillkit.models.attention`), and the head / embedding handles."""
    with capture_attention(model, needs, side.attention_mask, role) as captured:
        out = model(
            input_ids=side.input_ids,
            attention_mask=side.attention_mask,
            output_hidden_states=bool(needs.hidden_states),
            use_cache=False,
        )
    logits = out.logits[..., :vocab_size] if needs.logits else None
    hidden = {i: out.hidden_states[i] for i in needs.hidden_states} if needs.hidden_states else {}
    return ModelOutput(
        logits=logits,
        hidden_states=hidden,
        attentions=captured.attentions if captured is not None else {},
        attention_rows=captured.attention_rows if captured is not None else {},
        head=OutputHead(model, vocab_size) if needs.head else None,
        embed=InputEmbedding(model) if needs.embeddings else None,
    )


def reset_output_capture(model: nn.Module | None) -> None:
    """Make ``output_hidden_states`` work in this process. transformers 5 records hidden states through
    forward hooks it installs at a model's first forward, from ``_can_record_outputs`` registered per
    class when a model is constructed (``transformers.utils.output_capturing._CAN_RECORD_REGISTRY``). A
    model unpickled in a ``ddp_spawn`` process was constructed in the launching one: the registry there is
    empty and every forward returns ``hidden_states=None``. This registers each submodel's class again and
    drops hooks (and the installed flag) that came from elsewhere, so the next forward installs them here."""
    if model is None:
        return
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # an older transformers: hidden states are returned without hooks
        return
    for module in model.modules():
        can_record = getattr(type(module), "_can_record_outputs", None)
        if can_record is not None and not _CAN_RECORD_REGISTRY.get(module):
            _CAN_RECORD_REGISTRY[module] = can_record
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "output_capturing_hook":
                del module._forward_hooks[key]
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False


class DistillModule(L.LightningModule):
    def __init__(self, student: LoadedModel, teacher: LoadedModel | None, method: Method, optim: Any):
        super().__init__()
        self.student = student.model
        self.student_tokenizer = student.tokenizer
        self.student_vocab = student.vocab_size
        self.method = method
        self.optim = optim
        self.teacher_vocab = teacher.vocab_size if teacher is not None else None
        self.teacher_tokenizer = teacher.tokenizer if teacher is not None else None
        # the teacher is a submodule (moved to the device with the rest) but never trained nor saved
        self.teacher = (
            freeze(teacher.model) if teacher is not None and method.teacher_needs is not None else None
        )
        self.strict_loading = False  # checkpoints carry no teacher weights
        #: an optional on-policy data source (``distillkit.data.onpolicy``): may swap the batch for
        #: one of student-generated responses that were tokenized and span-annotated when buffered
        self.batch_source: Any = None
        self._step_start: float | None = None
        #: ``method.token_normalization=global``: the terms come back as token sums; the student
        #: response tokens of the accumulation group so far (a device tensor: no host sync)
        self.global_tokens = getattr(method, "token_normalization", "micro_batch") == "global"
        self._group_tokens: Tensor | None = None

    def setup(self, stage: str) -> None:
        # in every process of the run (ddp_spawn: after unpickling), before any forward there
        reset_output_capture(self.student)
        reset_output_capture(self.teacher)

    # -- modes ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # Lightning calls .train() on the whole module; the teacher stays eval
        return self

    def configure_model(self) -> None:
        """Sharding, when the strategy shards (FSDP2: ``strategy.shard_module``, see
        :func:`distillkit.strategies.shard_distill_module`); a no-op for every other strategy."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        shard = getattr(strategy, "shard_module", None)
        if shard is not None:
            shard(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]

    # -- the step --------------------------------------------------------------------------------
    def compute_terms(self, batch: Batch) -> dict[str, Tensor]:
        teacher_out = None
        t_needs = self.method.teacher_needs
        if t_needs is not None and self.teacher is not None:
            with torch.no_grad():
                teacher_out = run_forward(self.teacher, batch.teacher, t_needs, self.teacher_vocab, "teacher")
        student_out = run_forward(
            self.student, batch.student, self.method.student_needs, self.student_vocab, "student"
        )
        return self.method(student_out, teacher_out, batch)

    def weighted_loss(self, terms: dict[str, Tensor]) -> Tensor:
        weights = self.method.weights
        return sum(weights[name] * value for name, value in terms.items() if weights.get(name, 0.0) != 0.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    @staticmethod
    def response_tokens(batch: Batch) -> Tensor:
        """The student response-token count of a batch (the rows CE counts), on the batch's device."""
        return batch.student.labels.ne(-100).sum()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.batch_source is not None:
            batch = self.batch_source.replace(batch, self)
        terms = self.compute_terms(batch)
        loss = self.weighted_loss(terms)
        bs = batch.size
        shown = terms
        if self.global_tokens:
            # token sums: optimized as they are, their gradients divided by the group's global count in
            # on_before_optimizer_step; logged as this micro-batch's per-token means
            n = self.response_tokens(batch)
            self._group_tokens = n if self._group_tokens is None else self._group_tokens + n
            per_token = n.clamp_min(1).float()
            shown = {name: value.detach() / per_token for name, value in terms.items()}
            self.log("train/loss", loss.detach() / per_token, prog_bar=True, batch_size=bs)
        else:
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        for name, value in shown.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Global token normalization (DSKD's ``loss_denom``): Lightning divided each micro-batch's token
        sum by the accumulation ``A`` and DDP averaged over the ``W`` ranks, so the accumulated gradient
        is ``Σ ∇ sums / (A·W)``; times ``A·W / N`` (``N`` the student response tokens of the whole group on
        every rank, one all-reduce per optimizer step) it is ``Σ ∇ sums / N``, whatever the split into
        micro-batches and devices. Runs before Lightning clips the gradients, as DSKD's division does."""
        if not self.global_tokens or self._group_tokens is None:
            return
        total = self.trainer.strategy.reduce(self._group_tokens.float(), reduce_op="sum")
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / total.clamp_min(1.0)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:  # a sharded (FSDP2) gradient scales its local shard
                        grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                        grad.mul_(scale.to(device=grad.device, dtype=grad.dtype))
        self._group_tokens = None

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if (
            self.teacher is not None
            and self._trainer is not None
            and hasattr(self.trainer.strategy, "shard_module")
        ):
            from distillkit.strategies import reshard

            reshard(self.teacher)  # FSDP2: the teacher's root stays gathered from its forward until here
        if self._step_start is not None:
            tokens = batch.num_tokens  # counted at collate time: no device sync
            elapsed = max(time.perf_counter() - self._step_start, 1e-9)
            self.log("train/tokens_per_s", tokens / elapsed, prog_bar=True, batch_size=batch.size)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        terms = self.compute_terms(batch)
        loss = self.weighted_loss(terms)
        if self.global_tokens:  # shown as per-token means, as in training
            per_token = self.response_tokens(batch).clamp_min(1).float()
            terms = {name: value / per_token for name, value in terms.items()}
            loss = loss / per_token
        for name, value in terms.items():
            self.log(f"val/{name}", value, batch_size=batch.size, sync_dist=True)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch.size, sync_dist=True)

    # -- optimization ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        from distillkit.utils.optim import projector_groups, student_param_groups

        o = self.optim
        # biases and norm weights get no weight decay (DistiLLM/DSKD get_optimizer_params); the
        # projectors' decay follows the objective / the reference (distillkit/utils/optim.py)
        rule = getattr(o, "no_decay", "norms_and_biases")
        groups = student_param_groups(self.student, lr=o.lr, weight_decay=o.weight_decay, rule=rule)
        groups += projector_groups(
            self.method.param_groups(o.lr, o.projector_lr),
            weight_decay=o.weight_decay,
            override=getattr(o, "projector_weight_decay", None),
        )
        optimizer = torch.optim.AdamW(
            groups, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = o.warmup_steps or int(math.ceil(o.warmup_ratio * total))
        schedule = {"cosine": "cosine", "constant": "constant_with_warmup", "linear": "linear"}.get(
            o.schedule
        )
        if schedule is None:
            raise ValueError(f"trainer.optim.schedule={o.schedule!r}; valid: cosine, constant, linear")
        extra = {}
        min_lr = getattr(o, "min_lr", None)
        if min_lr is not None:
            if schedule != "cosine":
                raise ValueError(f"trainer.optim.min_lr={min_lr} needs schedule=cosine, got {o.schedule}")
            schedule, extra = "cosine_with_min_lr", {"scheduler_specific_kwargs": {"min_lr": float(min_lr)}}
        scheduler = get_scheduler(
            schedule, optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1), **extra
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
