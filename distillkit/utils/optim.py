"""Optimizer parameter groups: which student parameters get weight decay, and the projectors'.

The references (DistiLLM ``utils.py::get_optimizer_params``, the same function in DSKD ``code/utils.py``
and in the MTA release ``distillm-master/utils.py``) put the student's parameters in two AdamW groups:
one at the run's ``weight_decay`` and one at 0 for the parameters whose name contains ``bias``,
``ln_f.weight``, ``ln_1.weight``, ``ln_2.weight`` or ``ln_cross_attn``, i.e. every bias and every
LayerNorm weight **of GPT-2** (those are GPT-2's module names). With LoRA (``get_optimizer_params_peft``)
they keep a single group of the trainable parameters at the run's weight decay.

:func:`split_decay` generalises the rule by module type (:data:`NoDecay.norms_and_biases`, the default): a
parameter is exempt when its name ends in ``bias`` or it belongs to a normalization module
(``torch.nn.LayerNorm``/``GroupNorm``/``RMSNorm``/batch norms, or any class whose name ends in
``LayerNorm`` or ``RMSNorm``: ``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``, ...). On GPT-2 this
is exactly the references' set (tested). On other families the references' literal name list only
catches biases (Llama/Qwen/Mistral RMSNorm weights are named ``input_layernorm``/``norm``, OPT's
``self_attn_layer_norm``/``final_layer_norm``), so their norm weights are decayed there;
:data:`NoDecay.reference_names` reproduces that literal list, :data:`NoDecay.none` decays every
parameter (distillkit's behaviour before issue 9).

Projectors (:func:`projector_groups`). A group an objective returns keeps its own ``weight_decay`` when
it sets one; otherwise ``trainer.optim.projector_weight_decay`` applies when set, else the reference's
choice for that objective (:data:`REFERENCE_PROJECTOR_WEIGHT_DECAY`), else the run's ``weight_decay``:

* ``mta`` (DistiLLM path, ``distillm-master/utils.py::get_optimizer``): the projector group is added
  with ``lr 5e-4`` and no ``weight_decay`` key, so AdamW's default, the run's weight decay, applies to
  every projector parameter, biases included;
* DSKD family (``songmzhang/DSKD code/distiller.py::add_optimizer_param_group``): the same, the run's
  weight decay on all projector parameters;
* ``sra`` (``wind123mountain/SRE``, ctkd.md §2.5): its projector group has weight decay 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any

from torch import nn


class NoDecay(str, Enum):
    """Which student parameters are exempt from weight decay (``trainer.optim.no_decay``)."""

    #: biases and every normalization module's parameters, detected by module type (default)
    norms_and_biases = "norms_and_biases"
    #: the references' literal name list (GPT-2 names; see the module docstring)
    reference_names = "reference_names"
    #: none: every parameter decays (distillkit before issue 9)
    none = "none"


#: DistiLLM / DSKD / MTA ``get_optimizer_params``: substrings of the names exempt from weight decay
REFERENCE_NO_DECAY_NAMES = ("bias", "ln_f.weight", "ln_1.weight", "ln_2.weight", "ln_cross_attn")

#: the reference's projector weight decay per objective: ``None`` = the run's weight decay
REFERENCE_PROJECTOR_WEIGHT_DECAY: dict[str, float | None] = {
    "mta": None,
    "dskd": None,
    "dskd_cma": None,
    "dskdv2_eta": None,
    "sra": 0.0,
}

#: torch's normalization module types (``nn.RMSNorm`` exists from torch 2.4)
_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),
        nn.modules.batchnorm._NormBase,
        nn.LocalResponseNorm,
    )
    if t is not None
)
_NORM_NAME_SUFFIXES = ("LayerNorm", "RMSNorm")


def is_norm_module(module: nn.Module) -> bool:
    """A normalization layer: one of torch's norm types, or a class named ``*LayerNorm``/``*RMSNorm``
    (the HF families' own classes: ``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``, ...)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(_NORM_NAME_SUFFIXES)


def no_decay_names(model: nn.Module, rule: NoDecay | str = NoDecay.norms_and_biases) -> set[str]:
    """The names (as ``model.named_parameters()`` gives them) of the parameters exempt from weight decay."""
    rule = _as_rule(rule)
    if rule is NoDecay.none:
        return set()
    if rule is NoDecay.reference_names:
        return {n for n, _ in model.named_parameters() if any(s in n for s in REFERENCE_NO_DECAY_NAMES)}
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        norm = is_norm_module(module)
        for pname, _ in module.named_parameters(recurse=False):
            if norm or pname == "bias" or pname.endswith("_bias"):
                exempt.add(f"{module_name}.{pname}" if module_name else pname)
    # a tied parameter is listed under its first name only (as named_parameters does)
    return exempt & {n for n, _ in model.named_parameters()}


def split_decay(
    model: nn.Module, rule: NoDecay | str = NoDecay.norms_and_biases, trainable_only: bool = True
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """``(decay, no_decay)``: the model's named parameters split by :func:`no_decay_names`.

    Each parameter appears once (tied weights under their first name); with ``trainable_only`` the
    frozen ones (``requires_grad=False``, e.g. the base weights under LoRA) are left out.
    """
    exempt = no_decay_names(model, rule)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        (no_decay if name in exempt else decay).append((name, param))
    return decay, no_decay


def student_param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    rule: NoDecay | str = NoDecay.norms_and_biases,
    name: str = "student",
) -> list[dict[str, Any]]:
    """AdamW groups of the student: ``<name>`` at ``weight_decay`` and ``<name>.no_decay`` at 0 (empty
    groups left out)."""
    decay, no_decay = split_decay(model, rule)
    groups = []
    if decay:
        groups.append({"params": [p for _, p in decay], "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        groups.append(
            {"params": [p for _, p in no_decay], "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"}
        )
    return groups


def projector_groups(
    groups: Iterable[dict[str, Any]], *, weight_decay: float, override: float | None = None
) -> list[dict[str, Any]]:
    """The objectives' groups with their weight decay set (see the module docstring for the order)."""
    out = []
    for group in groups:
        group = dict(group)
        if "weight_decay" not in group:
            if override is not None:
                group["weight_decay"] = float(override)
            else:
                objective = str(group.get("name", "")).split(".")[0]
                ref = REFERENCE_PROJECTOR_WEIGHT_DECAY.get(objective)
                group["weight_decay"] = float(weight_decay if ref is None else ref)
        out.append(group)
    return out


def _as_rule(rule: NoDecay | str) -> NoDecay:
    if isinstance(rule, NoDecay):
        return rule
    value = getattr(rule, "value", rule)
    try:
        return NoDecay(str(value))
    except ValueError:
        valid = ", ".join(r.value for r in NoDecay)
        raise ValueError(f"trainer.optim.no_decay={value!r}; valid: {valid}") from None


def describe(groups: Sequence[dict[str, Any]]) -> list[tuple[str, int, float]]:
    """``(name, number of tensors, weight decay)`` per group, for logs and tests."""
    return [
        (str(g.get("name", "?")), len(list(g["params"])), float(g.get("weight_decay", -1.0))) for g in groups
    ]
