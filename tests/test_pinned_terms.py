"""Every method's loss terms on a fixed batch equal the values pinned before the method-seam redesign
(``tests/pinned_terms.py`` says how they were made)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.pinned_terms import CASES, PINNED, compute

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXPECTED = json.loads(PINNED.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_terms_equal_the_pinned_values(case, tmp_path):
    assert case in EXPECTED, f"no pinned values for {case}: run python -m tests.pinned_terms"
    got = compute(case, tmp_path)
    want = EXPECTED[case]
    assert set(got) == set(want), (case, sorted(got), sorted(want))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=2e-5, atol=1e-7, msg=f"{case}/{name}")
