"""Distillation methods: a base objective plus auxiliary objectives (see :mod:`distillkit.methods.base`).

:data:`OBJECTIVES` is the registry: one entry per objective, whose ``Config`` dataclass is also the
Hydra schema of its ``conf/method/<name>.yaml`` preset (and, for a base, of ``conf/method/base/<name>.yaml``).
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore

from distillkit.methods.base import Method, MethodSetupError, Objective, base_schema, method_schema
from distillkit.methods.dskd import DSKD, DSKDCMA
from distillkit.methods.dskdv2_eta import DSKDv2ETA
from distillkit.methods.kd import KD
from distillkit.methods.mined import MinED
from distillkit.methods.mta import MTA
from distillkit.methods.multilevel_ot import MultiLevelOT
from distillkit.methods.seqkd import SeqKD
from distillkit.methods.sft import SFT
from distillkit.methods.sra import SRA
from distillkit.methods.uld import ULD

#: name -> (objective class, the kd_rate of its `method=<name>` preset)
OBJECTIVES: dict[str, tuple[type[Objective], float]] = {
    "sft": (SFT, 0.0),
    "kd": (KD, 0.5),
    "mta": (MTA, 1.0),
    "sra": (SRA, 0.5),
    # cross-tokenizer bases (ctkd.md §3): (1 - kd_rate)·CE + kd_rate·(their terms), DSKD's kd_rate 0.5
    "uld": (ULD, 0.5),
    "mined": (MinED, 0.5),
    "dskd": (DSKD, 0.5),
    "dskd_cma": (DSKDCMA, 0.5),
    "dskdv2_eta": (DSKDv2ETA, 0.5),
    "multilevel_ot": (MultiLevelOT, 0.5),
    "seqkd": (SeqKD, 0.0),
}


def register_schemas(cs: Any) -> None:
    for name, (cls, kd_rate) in OBJECTIVES.items():
        cs.store(group="schema/method", name=name, node=method_schema(cls, name, kd_rate))
        if cls.kind == "base":
            cs.store(group="schema/method_base", name=name, node=base_schema(cls))


def build_method(node: dict[str, Any]) -> Method:
    """The :class:`Method` of a resolved ``method`` config node (a plain dict, see ``conf/method``):
    its ``_target_`` objective, the ``base`` node under an auxiliary one, ``kd_rate`` and ``terms``."""
    from hydra.utils import instantiate

    node = dict(node)
    name, kd_rate, terms = node.pop("name", None), node.pop("kd_rate", 0.5), node.pop("terms", None)
    normalization = node.pop("token_normalization", "micro_batch")
    base_node = node.pop("base", None)

    def build(n: dict[str, Any]) -> Objective:
        try:
            return instantiate(n, _convert_="all")
        except Exception as err:  # hydra wraps constructor errors; surface ours unchanged
            cause = err.__cause__ or err
            if isinstance(cause, ValueError):
                raise cause from None
            raise

    primary = build(node)
    if primary.kind == "base":
        return Method(primary, (), kd_rate=kd_rate, terms=terms, name=name, token_normalization=normalization)
    base = build(base_node) if base_node else None
    return Method(
        base, (primary,), kd_rate=kd_rate, terms=terms, name=name, token_normalization=normalization
    )


register_schemas(ConfigStore.instance())

__all__ = ["OBJECTIVES", "Method", "MethodSetupError", "Objective", "build_method", "register_schemas"]
