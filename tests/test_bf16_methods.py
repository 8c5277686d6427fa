"""Every method option of ``conf/method/`` trains under ``bf16-mixed`` autocast on the CPU, with every
loss term in float32 (computed under the precision plugin's autocast, as in the step).

Parametrized over the YAML files found there, so a method added later is covered without editing
this file. A method that refuses the tiny same-tokenizer pair (a cross-tokenizer method) is tried on
``model=tiny-xtok``; it is skipped, with the method's own reason, only if it refuses both.
"""

from __future__ import annotations

import json
import math

import pytest

from distillkit.methods.base import MethodSetupError
from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg, group_options, record_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_trains_under_bf16_mixed_on_the_cpu(method, tmp_path):
    base = SMALL + ["strategy=bf16", "callbacks=none", f"method={method}", "trainer.max_steps=2"]
    reasons = []
    for pair in ("tiny", "tiny-xtok"):
        rec = tmp_path / pair / "rec"
        cfg = compose_cfg(base + [f"model={pair}"] + record_steps(rec, checkpoint=False), tmp_path / pair)
        try:
            out = train(cfg, tmp_path / pair)
        except MethodSetupError as err:  # the method does not run on this pair: try the next one
            reasons.append(f"model={pair}: {err}")
            continue
        trainer = out["trainer"]
        assert trainer.precision == "bf16-mixed" and trainer.global_step == 2
        assert out["metrics"], "no metric was logged"
        for name, v in out["metrics"].items():
            assert math.isfinite(v), (name, v)
        steps = json.loads((rec / "steps.rank0.json").read_text())["steps"]
        assert steps and all(s["terms"]["dtypes"] == ["torch.float32"] for s in steps), steps
        return
    pytest.skip(f"method={method} runs on neither tiny pair: " + " | ".join(reasons))
