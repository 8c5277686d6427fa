"""Distributed strategies that need more than a name in YAML.

``strategy=fsdp``: **FSDP2** (``torch.distributed.fsdp.fully_shard``) through Lightning's
``ModelParallelStrategy`` (:class:`FSDP2Strategy`) and :meth:`DistillModule.configure_model
<distillkit.module.DistillModule.configure_model>`, which calls :func:`shard_distill_module`. Every decoder
block of the teacher and of the student is its own ``fully_shard`` unit, then each model's root (the
embeddings, the final norm and the head, tied or not), then the method (its projectors) when it has
trainable parameters: frozen and trainable parameters never share a unit, the teacher gets no gradient
and no optimizer state, and every trainable parameter is a DTensor whose gradient FSDP reduce-scatters.
The roots keep their parameters gathered after the forward (``reshard_after_forward=False``), so that the
heads and input embeddings that methods call through :mod:`distillkit.models.handles` after the model's
forward see full tensors and their gradients are reduced with the root's; the teacher's root is
resharded after each optimizer step (:meth:`DistillModule.on_train_batch_end`). Runs on CPU with gloo
(``strategy.accelerator=cpu``) as on GPUs with NCCL.

``strategy=fsdp1``: the classic ``FSDPStrategy`` (flat parameters, GPUs), each decoder block its own unit,
``use_orig_params=True`` for the root unit, which holds both embeddings (fairscale #1119, pytorch #104690).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distillkit.errors import ConfigError

log = logging.getLogger(__name__)

#: decoder-block class names of the families distillkit ships pairs for (the closed set
#: ``block_classes`` may name; add a family's block here to shard it)
BLOCK_CLASSES = frozenset(
    {"GPT2Block", "LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "OPTDecoderLayer"}
)

#: ``_target_`` of the two sharded strategies (``conf/strategy/fsdp.yaml``, ``fsdp1.yaml``)
FSDP2_TARGET = "distillkit.strategies.fsdp"
FSDP1_TARGET = "distillkit.strategies.fsdp1"

#: ``teacher_param_dtype`` choices: the dtype the teacher's shards are all-gathered and computed in
TEACHER_PARAM_DTYPES = ("float32", "bfloat16")


def _is_block(module: Any, names: frozenset[str]) -> bool:
    return type(module).__name__ in names


def _block_names(block_classes: Any) -> frozenset[str]:
    names = frozenset(str(n) for n in block_classes) if block_classes else BLOCK_CLASSES
    unknown = sorted(names - BLOCK_CLASSES)
    if unknown:
        raise ConfigError(
            f"strategy.strategy.block_classes names unknown decoder-block classes {unknown}; valid: "
            f"{', '.join(sorted(BLOCK_CLASSES))} (a new family's block goes into distillkit.strategies.BLOCK_CLASSES)"
        )
    return names


def _check_teacher_param_dtype(dtype: Any) -> str | None:
    if dtype is not None and str(dtype) not in TEACHER_PARAM_DTYPES:
        raise ConfigError(
            f"strategy.strategy.teacher_param_dtype={dtype!r}; valid: null, {', '.join(TEACHER_PARAM_DTYPES)}"
        )
    return str(dtype) if dtype else None


def _check_offload(offload: bool, device_type: str) -> None:
    if offload and device_type == "cpu":
        raise ConfigError(
            "strategy.strategy.teacher_cpu_offload=true with strategy.accelerator=cpu: the teacher already lives "
            "in host memory, and FSDP2's CPUOffloadPolicy needs an accelerator; set it to false on the CPU"
        )


#: the file that marks a Lightning distributed (sharded) checkpoint folder
SHARDED_METADATA = "meta.pt"


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A Lightning distributed checkpoint: a folder of DCP shards with ``meta.pt`` (``strategy=fsdp``)."""
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


# ----------------------------------------------------------------------------- config checks
def strategy_target(cfg: Any) -> str | None:
    """The ``_target_`` of ``cfg.strategy.strategy`` when it is a node, else ``None`` (a plain name)."""
    from omegaconf import OmegaConf

    node = cfg.strategy.get("strategy") if cfg.get("strategy") is not None else None
    return str(node.get("_target_")) if OmegaConf.is_dict(node) and node.get("_target_") else None


def is_sharded(cfg: Any) -> bool:
    """True for ``strategy=fsdp`` and ``strategy=fsdp1``."""
    return strategy_target(cfg) in (FSDP2_TARGET, FSDP1_TARGET)


def _hydra_mode(cfg: Any) -> str | None:
    """``RUN`` or ``MULTIRUN`` (from the composed ``hydra`` node, else Hydra's global config)."""
    from omegaconf import OmegaConf

    mode = OmegaConf.select(cfg, "hydra.mode", default=None) if OmegaConf.is_config(cfg) else None
    if mode is None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            mode = HydraConfig.get().get("mode")
    return None if mode is None else str(getattr(mode, "name", mode))


def validate_launch(cfg: Any) -> None:
    """Refuse the known trap (Lightning #11300) before anything loads: a strategy whose other ranks Lightning
    starts by re-running this command (``ddp``, ``fsdp``, ``fsdp1`` with more than one process) under a
    Hydra multirun (``-m``) with no cluster environment making the processes, where every re-run would run
    the whole sweep. SLURM tasks (the submitit launcher) and ``torchrun`` make their processes themselves."""
    s = cfg.get("strategy")
    if s is None or _hydra_mode(cfg) != "MULTIRUN":
        return
    name = strategy_target(cfg) or str(s.get("strategy"))
    if name not in ("ddp", "fsdp", FSDP2_TARGET, FSDP1_TARGET):
        return
    devices, nodes = s.get("devices"), s.get("num_nodes") or 1
    if isinstance(devices, int) and not isinstance(devices, bool) and devices * int(nodes) <= 1:
        return
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    raise ConfigError(
        f"strategy={name} with strategy.devices={devices} under a Hydra multirun (-m): Lightning would start the "
        "other ranks by re-running this command, and each re-run would run the whole sweep (Lightning #11300). "
        "Valid ways: strategy=ddp_spawn (one node), the submitit launcher (hydra/launcher=slurm_example: one "
        "SLURM task per GPU), torchrun, or the jobs one at a time without -m"
    )


def validate_strategy(cfg: Any) -> None:
    """The sharded strategies' settings, checked before anything loads (``distillkit.checks.validate``)."""
    validate_launch(cfg)
    target = strategy_target(cfg)
    if target not in (FSDP2_TARGET, FSDP1_TARGET):
        return
    s = cfg.strategy
    node = s.strategy
    _block_names(node.get("block_classes"))
    devices = s.get("devices")
    if not (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1):
        raise ConfigError(
            f"strategy.devices={devices!r}; the sharded strategies need a number of processes per node >= 1 "
            "(2 or more to shard anything)"
        )
    lora = cfg.model.student.get("lora") if cfg.get("model") is not None else None
    if lora is not None and target == FSDP2_TARGET:
        raise ConfigError(
            "model.student.lora is set: LoRA students are not supported under strategy=fsdp yet "
            "(use strategy=ddp_spawn, ddp or single)"
        )
    if target != FSDP2_TARGET:
        return
    _check_teacher_param_dtype(node.get("teacher_param_dtype"))
    _check_offload(bool(node.get("teacher_cpu_offload")), str(s.get("accelerator")))
    for key in ("activation_checkpointing", "teacher_cpu_offload", "save_distributed_checkpoint"):
        got = node.get(key)
        if got is not None and not isinstance(got, bool):
            raise ConfigError(f"strategy.strategy.{key}={got!r}; valid: true, false")


# ----------------------------------------------------------------------------- FSDP1 (GPUs)
def fsdp1(block_classes: list[str] | None = None, **kwargs: Any) -> Any:
    """A Lightning ``FSDPStrategy`` wrapping each decoder block on its own (``kwargs`` go to the strategy)."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    names = _block_names(block_classes)
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=functools.partial(_is_block, names=names))
    kwargs.setdefault("use_orig_params", True)
    return FSDPStrategy(auto_wrap_policy=policy, **kwargs)


# ----------------------------------------------------------------------------- FSDP2
def fsdp(
    block_classes: list[str] | None = None,
    activation_checkpointing: bool = False,
    teacher_cpu_offload: bool = False,
    teacher_param_dtype: str | None = None,
    save_distributed_checkpoint: bool = True,
    **kwargs: Any,
) -> Any:
    """The FSDP2 strategy of ``strategy=fsdp`` (:class:`FSDP2Strategy`); ``kwargs`` go to Lightning's
    ``ModelParallelStrategy`` (``process_group_backend``, ``timeout``)."""
    return FSDP2Strategy(
        block_classes=block_classes,
        activation_checkpointing=activation_checkpointing,
        teacher_cpu_offload=teacher_cpu_offload,
        teacher_param_dtype=teacher_param_dtype,
        save_distributed_checkpoint=save_distributed_checkpoint,
        **kwargs,
    )


def _make_strategy_class() -> type:
    import torch
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        """Lightning's ``ModelParallelStrategy`` as pure FSDP2 for distillation.

        Three adaptations, each the smallest that works:

        * **a 1-D data-parallel mesh over every process.** Lightning's ``"auto"`` sizes are
          data-parallel = nodes and tensor-parallel = processes per node, so on one node FSDP would
          shard over a mesh of size 1 and every rank would read the same batches; here
          ``data_parallel_size`` = world size and ``tensor_parallel_size`` = 1. On the CPU the mesh is a
          ``cpu`` mesh and the process group gloo (Lightning's default for the device), nothing else to do;
        * **sharded checkpoints without the teacher.** :meth:`DistillModule.on_save_checkpoint` drops
          ``teacher.*`` from the state dict before the DCP save; Lightning's load asks DCP for every key
          of the model, teacher included, and fails on the missing ones, so :meth:`load_checkpoint`
          asks only for the keys the module saves (the teacher is rebuilt from its own source);
        * **an offloaded teacher stays in host memory**: :meth:`model_to_device` moves every parameter but
          the shards of a ``CPUOffloadPolicy`` teacher (its buffers do move).

        The sharding itself is :func:`shard_distill_module`, called from the module's ``configure_model``
        with this strategy's options.
        """

        def __init__(
            self,
            block_classes: list[str] | None = None,
            activation_checkpointing: bool = False,
            teacher_cpu_offload: bool = False,
            teacher_param_dtype: str | None = None,
            save_distributed_checkpoint: bool = True,
            **kwargs: Any,
        ) -> None:
            super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
            self.block_names = _block_names(block_classes)
            self.activation_checkpointing = bool(activation_checkpointing)
            self.teacher_cpu_offload = bool(teacher_cpu_offload)
            self.teacher_param_dtype = _check_teacher_param_dtype(teacher_param_dtype)

        # -- the mesh ---------------------------------------------------------------------------
        def setup_environment(self) -> None:
            if self._data_parallel_size == "auto":
                self._data_parallel_size = self.num_nodes * self.num_processes
            if self._tensor_parallel_size == "auto":
                self._tensor_parallel_size = 1
            super().setup_environment()

        @property
        def shard_mesh(self) -> Any:
            """The 1-D data-parallel mesh ``fully_shard`` shards over."""
            return self.device_mesh["data_parallel"]

        def shard_module(self, module: Any) -> None:
            shard_distill_module(
                module,
                self.shard_mesh,
                block_names=self.block_names,
                activation_checkpointing=self.activation_checkpointing,
                teacher_cpu_offload=self.teacher_cpu_offload,
                teacher_param_dtype=self.teacher_param_dtype,
            )

        def model_to_device(self) -> None:
            assert self.model is not None
            device = self.root_device
            offloaded = getattr(self.lightning_module, "_offloaded_children", ())
            for name, child in self.model.named_children():
                if name not in offloaded:
                    child.to(device)
                    continue
                for sub in child.modules():  # buffers to the device, parameter shards stay in host memory
                    for key, buf in list(sub._buffers.items()):
                        if buf is not None:
                            sub._buffers[key] = buf.to(device)

        # -- checkpoints --------------------------------------------------------------------------
        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            path = Path(self.broadcast(checkpoint_path))
            if not is_sharded_checkpoint(path):
                return super().load_checkpoint(path, weights_only=weights_only)
            load_sharded_state(self.model, self.optimizers, path)
            return torch.load(path / SHARDED_METADATA, weights_only=weights_only)

        def load_weights(self, checkpoint_path: str | Path) -> None:
            """The model weights of a sharded checkpoint (e.g. the best one, before export), no optimizer.
            A collective: every rank calls it."""
            path = Path(self.broadcast(str(checkpoint_path)))
            load_sharded_state(self.model, [], path)

    return FSDP2Strategy


def load_sharded_state(model: Any, optimizers: list[Any], path: Path) -> None:
    """Load a Lightning DCP checkpoint folder into the sharded ``model`` (and ``optimizers``), asking DCP
    only for the keys the module saves: not ``teacher.*``."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved = {k: v for k, v in get_model_state_dict(model).items() if not k.startswith("teacher.")}
    state = {"state_dict": saved}
    dcp_load(state, checkpoint_id=path)
    set_model_state_dict(model, state["state_dict"], options=StateDictOptions(strict=False))
    for idx, optimizer in enumerate(optimizers):
        key = f"optimizer_{idx}"
        optim_state = {key: get_optimizer_state_dict(model, optimizer)}
        dcp_load(optim_state, checkpoint_id=path)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_state[key])


_CLASS: type | None = None


def strategy_class() -> type:
    """The :class:`FSDP2Strategy` class (built on first use: importing this module imports no Lightning)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_strategy_class()
    return _CLASS


def FSDP2Strategy(**kwargs: Any) -> Any:  # noqa: N802  (the class, behind a lazy import)
    """A new :class:`FSDP2Strategy` (see :func:`strategy_class`)."""
    return strategy_class()(**kwargs)


def is_fsdp2(strategy: Any) -> bool:
    """True for a live :class:`FSDP2Strategy` instance."""
    return _CLASS is not None and isinstance(strategy, _CLASS)


# ----------------------------------------------------------------------------- the sharding
def _checkpoint_wrapped(module: Any) -> Any:
    return getattr(module, "_checkpoint_wrapped_module", None)


def _blocks(model: Any, names: frozenset[str]) -> list[Any]:
    """The decoder blocks of ``model`` (each as its activation-checkpoint wrapper when it has one)."""
    inner_ids = set()
    found = []
    for module in model.modules():
        inner = _checkpoint_wrapped(module)
        if inner is not None and _is_block(inner, names):
            found.append(module)
            inner_ids.add(id(inner))
    for module in model.modules():
        if _is_block(module, names) and id(module) not in inner_ids:
            found.append(module)
    return found


def _no_blocks_error(role: str, model: Any, names: frozenset[str]) -> ConfigError:
    counts: dict[str, int] = {}
    for m in model.modules():
        counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    repeated = sorted(n for n, c in counts.items() if c > 1 and n not in ("ModuleList", "Dropout"))
    return ConfigError(
        f"strategy=fsdp: no decoder block of the {role} ({type(model).__name__}) is one of "
        f"strategy.strategy.block_classes={sorted(names)}; its repeated module classes: {repeated}"
    )


def shard_distill_module(
    module: Any,
    mesh: Any,
    *,
    block_names: frozenset[str] = BLOCK_CLASSES,
    activation_checkpointing: bool = False,
    teacher_cpu_offload: bool = False,
    teacher_param_dtype: str | None = None,
) -> None:
    """``fully_shard`` the teacher, the student and the method of a :class:`DistillModule` as separate units.

    Teacher: each block, then the root (``reshard_after_forward=False``: the head and the embedding stay
    gathered for the handles until :meth:`DistillModule.on_train_batch_end` reshards it), all frozen;
    optionally gathered and computed in bf16 with fp32 outputs (``MixedPrecisionPolicy``) and offloaded to
    host memory between uses (``CPUOffloadPolicy``). Student: each block (wrapped by torch's
    ``checkpoint_wrapper`` first under ``activation_checkpointing``), then the root, likewise not resharded
    after the forward (it is after the backward). Method: one unit when it owns trainable parameters (the
    projectors: sharded, in the optimizer and the checkpoint, their gradients reduce-scattered like the
    student's). Idempotent (``configure_model`` may run more than once)."""
    import torch
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    if isinstance(module.student, FSDPModule):
        return
    teacher = getattr(module, "teacher", None)
    n_teacher = 0
    if teacher is not None:
        block_kw: dict[str, Any] = {"mesh": mesh}
        root_kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": False}
        if teacher_param_dtype == "bfloat16":
            block_kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
            root_kw["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, output_dtype=torch.float32
            )
        if teacher_cpu_offload:
            _check_offload(True, mesh.device_type)
            block_kw["offload_policy"] = root_kw["offload_policy"] = CPUOffloadPolicy()
            module._offloaded_children = ("teacher",)
        blocks = _blocks(teacher, block_names)
        if not blocks:
            raise _no_blocks_error("teacher", teacher, block_names)
        n_teacher = len(blocks)
        for block in blocks:
            fully_shard(block, **block_kw)
        fully_shard(teacher, **root_kw)

    student = module.student
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        apply_activation_checkpointing(
            student,
            checkpoint_wrapper_fn=checkpoint_wrapper,
            check_fn=functools.partial(_is_block, names=block_names),
        )
    blocks = _blocks(student, block_names)
    if not blocks:
        raise _no_blocks_error("student", student, block_names)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(student, mesh=mesh, reshard_after_forward=False)

    method = module.method
    if any(p.requires_grad for p in method.parameters()):
        fully_shard(method, mesh=mesh, reshard_after_forward=False)
    loose = [name for name, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if loose:  # a trainable parameter outside every unit would get no gradient reduction
        raise RuntimeError(f"strategy=fsdp: trainable parameters outside every fully_shard unit: {loose[:5]}")
    log.info(
        "FSDP2: %d teacher + %d student blocks sharded over %d processes%s",
        n_teacher,
        len(blocks),
        mesh.size(),
        " (method projectors: one unit)" if isinstance(method, FSDPModule) else "",
    )


def reshard(model: Any) -> None:
    """Free the gathered parameters of a root left unsharded after its forward (the teacher's)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


# ----------------------------------------------------------------------------- export
def gather_full_model(model: Any, rank_zero: bool) -> Any:
    """A plain (unsharded, CPU) copy of the FSDP2-sharded HF ``model`` with its full trained weights,
    on rank 0 (``None`` on the other ranks). A collective: every rank calls it. The copy is what
    :func:`distillkit.models.pair.export_student` writes and the final evaluation generates with."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not rank_zero:
        return None
    dtype = next(iter(state.values())).dtype if state else torch.float32
    config = model.config
    plain = AutoModelForCausalLM.from_config(
        config, dtype=dtype, attn_implementation=config._attn_implementation
    )
    result = plain.load_state_dict(_plain_keys(state), strict=False)
    missing = [k for k in result.missing_keys if k not in _tied_keys(plain)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"gathering the sharded student: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    plain.tie_weights()
    return plain.eval()


def _plain_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k.replace("._checkpoint_wrapped_module", ""): v for k, v in state.items()}


def _tied_keys(model: Any) -> set[str]:
    """The parameter names a model ties to others (a dict or a list, by transformers version)."""
    return set(getattr(model, "_tied_weights_keys", None) or ())
