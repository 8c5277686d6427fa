"""The loss terms of fixed configs on a fixed batch at initialization, pinned across redesigns.

``python -m tests.pinned_terms`` rewrites ``tests/data/pinned_terms.json`` from the current code; it
was first written by commit c3751b6 (before the method-seam redesign), and ``test_pinned_terms.py``
checks that every later commit computes the same values. Regenerate it only for an intended change
of a loss, and say so in the commit message.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PINNED = Path(__file__).resolve().parent / "data" / "pinned_terms.json"
COMMON = [
    "model.teacher_sft.enabled=false",
    "data.synthetic.n_train=24",
    "data.synthetic.n_dev=8",
    "data.synthetic.n_test=4",
    "data.batch_size=8",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
]
#: the pinned values are per-micro-batch means; the DSKD v1 methods default to the global token
#: normalization (token sums), tested in tests/test_token_normalization.py
MICRO = "method.token_normalization=micro_batch"

#: name -> overrides; every existing method and the MTA ablations that change the loss computation
CASES = {
    "sft": ["method=sft"],
    "kd_fkl": ["method=kd"],
    "kd_srkl_t2": ["method=kd", "method.divergence=srkl", "method.temperature=2.0"],
    "kd_akl": ["method=kd", "method.divergence=akl"],
    "mta": ["method=mta"],
    "mta_word": ["method=mta", "method.level=word"],
    "mta_uniform": ["method=mta", "method.weights=uniform"],
    "mta_entropy": ["method=mta", "method.weights=entropy"],
    "mta_attention": ["method=mta", "method.weights=attention"],
    "mta_layers1": ["method=mta", "layer_map.num_pairs=1"],
    "mta_response_exact": ["method=mta", "method.span_region=response", "method.membership_rule=exact"],
    # added with the objectives (first written by the commit that added them). On the tiny pair: its BPE
    # tokenizer trains deterministically, the tiny-xtok Unigram does not (HF tokenizers' Unigram trainer),
    # so a fresh cache would move the values of a tiny-xtok case
    "sra": ["method=sra"],
    "uld": ["method=uld", MICRO],
    "mined": ["method=mined", MICRO],
    "dskd": ["method=dskd", MICRO],
    "dskd_cma": ["method=dskd_cma", MICRO],
    "dskdv2_eta": ["method=dskdv2_eta"],
    "multilevel_ot": ["method=multilevel_ot"],
    "mta_xtok": ["method=mta_xtok"],
}


def compute(name: str, tmp: Path) -> dict[str, float]:
    """Builds the run of ``CASES[name]`` without fitting and returns its terms on the first 8 examples."""
    import lightning as L

    from distillkit.data.datamodule import collate
    from distillkit.pipeline import train
    from tests.helpers import compose_cfg

    cfg = compose_cfg(COMMON + CASES[name], tmp)
    fit = L.Trainer.fit
    L.Trainer.fit = lambda self, *a, **k: None  # build everything, train nothing
    try:
        out = train(cfg, tmp)
    finally:
        L.Trainer.fit = fit
    module, dm = out["module"], out["datamodule"]
    module.eval()
    with torch.no_grad():
        terms = module.compute_terms(collate(dm.examples["train"][:8]))
        terms["loss"] = module.weighted_loss(terms)
    return {k: float(v) for k, v in sorted(terms.items())}


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    values = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            values[case] = compute(case, Path(d))
            print(case, values[case])
    PINNED.write_text(json.dumps(values, indent=1) + "\n")
