"""Pure loss functions: token-level divergences, span/token representation losses and the
cross-tokenizer losses (:mod:`distillkit.losses.xtok`).

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
from distillkit.losses.xtok import (
    dskd_cma_terms,
    dskd_terms,
    eta_pinv_init,
    eta_s2t_matrix,
    eta_terms,
    mined_loss,
    mined_targets,
    multilevel_ot_loss,
    sinkhorn_ot,
    uld_loss,
)

__all__ = [
    "COM_KINDS",
    "DIVERGENCES",
    "REDUCTIONS",
    "akl",
    "com_alignment_loss",
    "cross_entropy",
    "dsa_loss",
    "dskd_cma_terms",
    "dskd_terms",
    "eta_pinv_init",
    "eta_s2t_matrix",
    "eta_terms",
    "fkl",
    "get_divergence",
    "hra_loss",
    "js",
    "mined_loss",
    "mined_targets",
    "multilevel_ot_loss",
    "rkd_loss",
    "rkl",
    "sinkhorn_ot",
    "skl",
    "srkl",
    "tvd",
    "uld_loss",
]
