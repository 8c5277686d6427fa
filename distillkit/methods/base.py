"""The method contract: a method is one base objective plus zero or more auxiliary objectives.

An :class:`Objective` is an ``nn.Module`` (so the projectors it owns train, checkpoint and resume with
the student; the exported HF student leaves them out). Each objective

1. **declares** its knobs once, as a dataclass (:attr:`Objective.Config`, enums for closed choices,
   also the Hydra schema of its config), what it needs from each forward
   (:attr:`~Objective.student_needs` / :attr:`~Objective.teacher_needs`, :class:`~distillkit.types.Needs`:
   logits, hidden states, attention, head and embedding handles; ``teacher_needs = None`` = no teacher
   forward), the data annotators that build its alignments once in data preparation
   (:meth:`~Objective.annotators`), the cheap tokenizer checks it needs (:meth:`~Objective.check_tokenizers`),
   and its named terms with their structural weights (:meth:`~Objective.structural_weights`);
2. **receives** the typed outputs of one forward per model and the batch, inside the training step, and
   **returns** a dict of named, unweighted scalar terms. It never runs a model, parses, tokenizes or
   aligns.

A :class:`Method` composes them. Its total is

    loss = (1 - kd_rate) * CE + kd_rate * (Σ base terms + Σ auxiliary terms)

each term times its objective's structural weight and the user's ``terms.<name>`` multiplier (0
switches a term off: an ablation). That is the mixing of DSKD/DistiLLM/MTA (``kd_rate`` = λ) and of SRA
(``kd_rate`` = 1 − α, no base). CE is the student's own cross-entropy on the response, computed once by
the method and logged even at weight 0 (detached); an objective that counts CE itself (``sft`` as a
base) declares a ``ce`` weight, which adds to the mixing one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distillkit.errors import MethodSetupError
from distillkit.losses import cross_entropy
from distillkit.types import Batch, ModelOutput, Needs


def coerce_enums(obj: Any) -> None:
    """Turns the string values of a dataclass's Enum fields into members, naming the valid values on a
    bad one (the same check Hydra makes at compose time, for objectives built directly in Python)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind = hints.get(f.name)
        if isinstance(kind, type) and issubclass(kind, Enum):
            raw = getattr(obj, f.name)
            if not isinstance(raw, kind):
                try:
                    setattr(obj, f.name, kind(raw))
                except ValueError:
                    valid = ", ".join(m.value for m in kind)
                    raise MethodSetupError(f"method.{f.name}={raw!r}; valid: {valid}") from None


@dataclass
class ObjectiveConfig:
    """The knobs of an objective (subclasses add theirs, each with its default and meaning)."""

    def __post_init__(self) -> None:
        coerce_enums(self)


class Objective(nn.Module):
    """A base or auxiliary objective (see the module docstring)."""

    name: ClassVar[str] = "objective"
    #: "base" (the token-level objective a method stands on) or "aux" (added on top of a base)
    kind: ClassVar[str] = "base"
    Config: ClassVar[type] = ObjectiveConfig
    #: every term can come back as a sum over the rows it counts (``self.reduction == "sum"``), which the
    #: global token normalization (``method.token_normalization=global``) divides by the global count
    token_sums: ClassVar[bool] = False

    def __init__(self, **knobs: Any):
        super().__init__()
        self.cfg = self.Config(**knobs)
        #: "mean" (each term a mean over the rows it counts) or "sum" (set by the Method under the
        #: global token normalization; only for ``token_sums`` objectives)
        self.reduction = "mean"

    # -- declared before training -----------------------------------------------------------------
    def check_tokenizers(self, teacher_tokenizer: Any, student_tokenizer: Any) -> None:
        """Cheap checks on the tokenizers alone, before any weights load (raise MethodSetupError)."""

    def annotators(self, teacher: Any, student: Any) -> list[Callable]:
        """Data-preparation steps (span grids, token pairs) run once per split, never in the step."""
        return []

    #: the teacher model is needed in data preparation even when the step runs no teacher forward (SeqKD)
    needs_teacher_model: ClassVar[bool] = False

    def data_transforms(self, teacher: Any, student: Any) -> list[Callable]:
        """Row transforms ``(split, rows, data_cfg) -> rows`` applied before tokenization (SeqKD swaps the
        train responses for the teacher's generations), once, in data preparation."""
        return []

    def setup(self, teacher: Any, student: Any) -> None:
        """Build projectors and check the pair (``LoadedModel``s; ``teacher`` is None without one)."""

    @property
    def student_needs(self) -> Needs:
        return Needs(logits=True)

    @property
    def teacher_needs(self) -> Needs | None:
        return Needs(logits=True)

    def structural_weights(self) -> dict[str, float]:
        """Term name -> coefficient from the objective's own knobs, before ``kd_rate`` and multipliers."""
        raise NotImplementedError

    def tags(self) -> dict[str, Any]:
        """The choices of this objective worth recording (results.json, W&B)."""
        return {}

    # -- inside the step ----------------------------------------------------------------------------
    def forward(
        self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch, active: frozenset[str]
    ) -> dict[str, Tensor]:
        """The named terms; only those in ``active`` (weight != 0) need computing."""
        raise NotImplementedError

    def param_groups(self, base_lr: float, projector_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups for the objective's own parameters (projectors)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": projector_lr or base_lr, "name": f"{self.name}.projectors"}]


#: ``method.token_normalization``: ``micro_batch`` (each token-level term a mean over its micro-batch's
#: rows) or ``global`` (DSKD's ``loss_denom``: every term a token sum divided by the student response-token
#: count of the whole accumulation group on every device; see :class:`distillkit.module.DistillModule`)
TOKEN_NORMALIZATIONS = ("micro_batch", "global")


class Method(nn.Module):
    """``(1 - kd_rate)·CE + kd_rate·(base + Σ aux)``, every term weighted and logged on its own."""

    def __init__(
        self,
        base: Objective | None,
        aux: Sequence[Objective] = (),
        kd_rate: float = 0.5,
        terms: Mapping[str, float] | None = None,
        name: str | None = None,
        token_normalization: str = "micro_batch",
    ):
        super().__init__()
        if not 0.0 <= float(kd_rate) <= 1.0:
            raise MethodSetupError(f"method.kd_rate must be in [0, 1], got {kd_rate}")
        if token_normalization not in TOKEN_NORMALIZATIONS:
            raise MethodSetupError(
                f"method.token_normalization={token_normalization!r}; valid: {', '.join(TOKEN_NORMALIZATIONS)}"
            )
        if base is not None and base.kind != "base":
            raise MethodSetupError(f"method.base: {base.name!r} is an auxiliary objective, not a base")
        for obj in aux:
            if obj.kind != "aux":
                raise MethodSetupError(f"{obj.name!r} is a base objective; only one base per method")
        self.base = base
        self.aux = nn.ModuleList(aux)
        self.kd_rate = float(kd_rate)
        self.multipliers = dict(terms or {})
        self.name = name or (aux[0].name if aux else base.name if base is not None else "ce")
        self.token_normalization = token_normalization
        self.reduction = "sum" if token_normalization == "global" else "mean"
        if self.reduction == "sum":
            odd = [o.name for o in self.objectives if not o.token_sums]
            if odd:
                from distillkit.methods import OBJECTIVES

                valid = sorted(n for n, (cls, _) in OBJECTIVES.items() if cls.token_sums)
                raise MethodSetupError(
                    f"method.token_normalization=global divides token sums by the global token count, but "
                    f"{odd} return(s) averages that are not token sums; objectives that can: {valid} "
                    "(or method.token_normalization=micro_batch)"
                )
            for obj in self.objectives:
                obj.reduction = "sum"
        seen: dict[str, str] = {}
        for obj in self.objectives:
            for term in obj.structural_weights():
                if term != "ce" and term in seen:
                    raise MethodSetupError(f"term {term!r} is declared by both {seen[term]} and {obj.name}")
                seen[term] = obj.name

    @property
    def objectives(self) -> list[Objective]:
        return ([self.base] if self.base is not None else []) + list(self.aux)

    def objective(self, name: str) -> Objective:
        """The objective called ``name`` (e.g. ``method.objective("mta").projectors``)."""
        for obj in self.objectives:
            if obj.name == name:
                return obj
        raise KeyError(
            f"method {self.name!r} has no objective {name!r}; it has {[o.name for o in self.objectives]}"
        )

    # -- declared before training ---------------------------------------------------------------------
    def check_tokenizers(self, teacher_tokenizer: Any, student_tokenizer: Any) -> None:
        for obj in self.objectives:
            obj.check_tokenizers(teacher_tokenizer, student_tokenizer)

    def annotators(self, teacher: Any, student: Any) -> list[Callable]:
        return [a for obj in self.objectives for a in obj.annotators(teacher, student)]

    @property
    def needs_teacher_model(self) -> bool:
        return self.teacher_needs is not None or any(o.needs_teacher_model for o in self.objectives)

    def data_transforms(self, teacher: Any, student: Any) -> list[Callable]:
        return [t for obj in self.objectives for t in obj.data_transforms(teacher, student)]

    def setup(self, teacher: Any, student: Any) -> None:
        # a multiplier of 1 on a term this composition lacks (terms.kd under method/base=sft) is harmless
        unknown = {k for k, v in self.multipliers.items() if k not in self.structural_weights() and v != 1.0}
        if unknown:
            raise MethodSetupError(
                f"method.terms has unknown term(s) {sorted(unknown)} for method {self.name!r}; "
                f"valid: {sorted(self.structural_weights())}"
            )
        for obj in self.objectives:
            obj.setup(teacher, student)

    @property
    def student_needs(self) -> Needs:
        needs = Needs(logits=True)  # CE
        for obj in self.objectives:
            needs = needs.merge(obj.student_needs)
        return needs

    @property
    def teacher_needs(self) -> Needs | None:
        needs = None
        for obj in self.objectives:
            t = obj.teacher_needs
            if t is not None:
                needs = t if needs is None else needs.merge(t)
        return needs

    def structural_weights(self) -> dict[str, float]:
        weights = {"ce": 1.0 - self.kd_rate}
        for obj in self.objectives:
            for term, w in obj.structural_weights().items():
                weights[term] = weights.get(term, 0.0) + self.kd_rate * w
        return weights

    @property
    def weights(self) -> dict[str, float]:
        return {k: w * float(self.multipliers.get(k, 1.0)) for k, w in self.structural_weights().items()}

    @property
    def chunk_size(self) -> int | None:
        """The base objective's ``chunk_size`` (``method.chunk_size`` on a base, ``method.base.chunk_size``
        under an auxiliary one), which the method's CE follows too; None (unchunked) when it has none."""
        size = getattr(getattr(self.base, "cfg", None), "chunk_size", None)
        return int(size) if size else None

    def active(self, term: str) -> bool:
        return self.weights.get(term, 0.0) != 0.0

    def tags(self) -> dict[str, Any]:
        tags: dict[str, Any] = {
            "method": self.name,
            "base": self.base.name if self.base is not None else None,
            "aux": [a.name for a in self.aux],
            "kd_rate": self.kd_rate,
            "token_normalization": self.token_normalization,
        }
        for obj in self.objectives:
            tags.update(obj.tags())
        tags.update({f"terms.{k}": v for k, v in self.multipliers.items()})
        return tags

    def param_groups(self, base_lr: float, projector_lr: float | None) -> list[dict[str, Any]]:
        return [g for obj in self.objectives for g in obj.param_groups(base_lr, projector_lr)]

    # -- inside the step ----------------------------------------------------------------------------------
    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: Batch) -> dict[str, Tensor]:
        weights = self.weights
        active = frozenset(k for k, w in weights.items() if w != 0.0)
        # CE is cheap from the student's logits: logged even at weight 0 (as a detached diagnostic);
        # over chunks of positions when the base objective asks for it (its ``chunk_size``)
        ce = cross_entropy(
            student.logits, batch.student.labels, reduction=self.reduction, chunk_size=self.chunk_size
        )
        terms = {"ce": ce if "ce" in active else ce.detach()}
        for obj in self.objectives:
            terms.update(obj(student, teacher, batch, active))
        return terms


# ------------------------------------------------------------------------------------------- Hydra schemas
def method_schema(cls: type[Objective], name: str, kd_rate: float = 0.5) -> type:
    """The Hydra schema of ``method=<name>``: the objective's own knobs plus ``_target_``, ``name``,
    ``kd_rate``, ``terms``, and (auxiliary objectives) the ``base`` node chosen by ``method/base``."""
    extra: list[tuple] = [
        ("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}")),
        ("name", str, field(default=name)),
        ("kd_rate", float, field(default=kd_rate)),
        ("terms", dict[str, float], field(default_factory=dict)),
        ("token_normalization", str, field(default="micro_batch")),
    ]
    if cls.kind == "aux":
        extra.append(("base", Any, field(default=None)))
    return _picklable(make_dataclass(f"{cls.__name__}MethodSchema", extra, bases=(cls.Config,)), cls)


def base_schema(cls: type[Objective]) -> type:
    """The Hydra schema of a ``method/base=<name>`` option: the base objective's knobs + ``_target_``."""
    extra = [("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}"))]
    return _picklable(make_dataclass(f"{cls.__name__}BaseSchema", extra, bases=(cls.Config,)), cls)


def _picklable(schema: type, cls: type) -> type:
    """Give a generated schema a home in its objective's module, so configs typed by it pickle
    (``ddp_spawn`` pickles the module, and with it every DictConfig it holds)."""
    import sys

    schema.__module__ = cls.__module__
    setattr(sys.modules[cls.__module__], schema.__name__, schema)
    return schema


def zero_like_graph(x: Tensor) -> Tensor:
    """A 0 that keeps the graph (for empty batches of a term)."""
    return (x.sum() * 0.0).float() if x.requires_grad else torch.zeros((), device=x.device)
