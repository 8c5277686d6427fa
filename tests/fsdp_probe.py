"""A test-only callback that reports, from inside each FSDP2 rank, what the sharded run did: added from
the command line (``+callbacks.probe._target_=tests.fsdp_probe.FSDPProbe +callbacks.probe.out=DIR``) to
``python -m distillkit.run strategy=fsdp ...``, whose ranks are separate processes. Each rank writes
``DIR/probe-rank<r>.json``; rank 0 also writes the gathered full student weights (``gathered-student.pt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


def _local(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (p.to_local() if isinstance(p, DTensor) else p).detach().clone()


class FSDPProbe(L.Callback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.start: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        for role in ("teacher", "student", "method"):
            sub = getattr(pl_module, role, None)
            if sub is not None:
                self.start[role] = {n: _local(p) for n, p in sub.named_parameters()}

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        teacher, student, method = pl_module.teacher, pl_module.student, pl_module.method
        optimizer = trainer.optimizers[0]
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        with_state = {id(p) for p in optimizer.state}
        t_params = list(teacher.parameters()) if teacher is not None else []
        units = [name for name, m in pl_module.named_modules() if isinstance(m, FSDPModule)]

        def changed(role: str, sub: Any) -> int:
            return sum(
                not torch.equal(_local(p), self.start[role][n])
                for n, p in sub.named_parameters()
                if n in self.start[role]
            )

        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "strategy": type(trainer.strategy).__name__,
            "units": units,
            "teacher_params": len(t_params),
            "teacher_requires_grad": sum(p.requires_grad for p in t_params),
            "teacher_grads": sum(p.grad is not None for p in t_params),
            "teacher_in_optimizer": sum(id(p) in in_optimizer for p in t_params),
            "teacher_with_optimizer_state": sum(id(p) in with_state for p in t_params),
            "teacher_changed": changed("teacher", teacher) if teacher is not None else 0,
            "teacher_dtensor": sum(isinstance(p, DTensor) for p in t_params),
            "student_changed": changed("student", student),
            "student_params": sum(1 for _ in student.parameters()),
            "method_trainable": sum(p.requires_grad for p in method.parameters()),
            "method_in_optimizer": sum(id(p) in in_optimizer for p in method.parameters() if p.requires_grad),
            "method_changed": changed("method", method) if "method" in self.start else 0,
            "trainable_not_dtensor": [
                n for n, p in pl_module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)
            ],
            "optimizer_params": len(in_optimizer),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        state = get_model_state_dict(
            student, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if trainer.is_global_zero:
            torch.save(
                {k.replace("._checkpoint_wrapped_module", ""): v for k, v in state.items()},
                self.out / "gathered-student.pt",
            )
        (self.out / f"probe-rank{trainer.global_rank}.json").write_text(json.dumps(report, indent=1))
