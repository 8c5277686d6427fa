"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent
(`.ci/run` fails if it is absent, so CI always runs them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path | None:
    value = os.environ.get("DISTILLKIT_DATA_ROOT")
    candidates = [Path(value)] if value else []
    candidates.append(REPO.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None:
        pytest.skip("shared data not found: set DISTILLKIT_DATA_ROOT to a folder like ../shared/data")
    return root


@pytest.fixture(scope="session")
def gpt2_tokenizer(data_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(data_root / "tokenizers" / "gpt2"))


@pytest.fixture(scope="session")
def qwen_tokenizer(data_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(data_root / "tokenizers" / "qwen2"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets the session's own cache folder, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "distillkit-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("DISTILLKIT_CACHE", str(cache))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids thread contention on a busy 2-core machine (up to 100x
    slower with two). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
