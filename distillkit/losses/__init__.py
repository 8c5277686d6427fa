"""Pure loss functions: token-level divergences and span/token representation losses.

They take tensors and return tensors (no models, no batches), so methods compose them and tests
check them against formulas.
"""

from distillkit.losses.divergences import (
    DIVERGENCES,
    REDUCTIONS,
    akl,
    cross_entropy,
    fkl,
    get_divergence,
    js,
    rkl,
    skl,
    srkl,
    tvd,
)
from distillkit.losses.span import COM_KINDS, com_alignment_loss, dsa_loss, hra_loss, rkd_loss

__all__ = [
    "COM_KINDS",
    "DIVERGENCES",
    "REDUCTIONS",
    "akl",
    "com_alignment_loss",
    "cross_entropy",
    "dsa_loss",
    "fkl",
    "get_divergence",
    "hra_loss",
    "js",
    "rkd_loss",
    "rkl",
    "skl",
    "srkl",
    "tvd",
]
