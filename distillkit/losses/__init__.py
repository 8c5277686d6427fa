"""Pure loss functions: token-level divergences, span/token representation losses and the
cross-tokenizer losses (:mod:`distillkit.losses.xtok`).

They take tensors and return tensors (no models, no batches), so methods compose them and tests
check them against formulas. SRA's span losses live in :mod:`distillkit.losses.sra`.
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
from distillkit.losses.sra import (
    COM_DISTANCES,
    GEO_NORMALIZATIONS,
    SPAN_LOGIT_REDUCTIONS,
    com_loss,
    dynamics_loss,
    geometric_loss,
    salience,
    span_logit_loss,
)
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
    "COM_DISTANCES",
    "COM_KINDS",
    "DIVERGENCES",
    "GEO_NORMALIZATIONS",
    "REDUCTIONS",
    "SPAN_LOGIT_REDUCTIONS",
    "akl",
    "com_alignment_loss",
    "com_loss",
    "cross_entropy",
    "dsa_loss",
    "dynamics_loss",
    "dskd_cma_terms",
    "dskd_terms",
    "eta_pinv_init",
    "eta_s2t_matrix",
    "eta_terms",
    "fkl",
    "geometric_loss",
    "get_divergence",
    "hra_loss",
    "js",
    "mined_loss",
    "mined_targets",
    "multilevel_ot_loss",
    "rkd_loss",
    "rkl",
    "salience",
    "sinkhorn_ot",
    "skl",
    "span_logit_loss",
    "srkl",
    "tvd",
    "uld_loss",
]
