"""One line per real event (issue 13 item 13): Lightning's lines once, no tips, no HF bars without a
terminal, no transient bos/eos warnings, a progress line that counts optimizer steps up to the last
one, a message while waiting on a cache lock, no leftover ``.work`` folders, an uncut summary."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from distillkit.callbacks.progress import ProgressLog
from distillkit.utils.io import lock_holder, locked
from tests.helpers import SMALL

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _progress_steps(caplog, **trainer_kwargs):
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ProgressLog(every_n_steps=2)],
        limit_val_batches=0,
        **trainer_kwargs,
    )
    with caplog.at_level(logging.INFO, logger="distillkit"):
        trainer.fit(BoringModel())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train step")]
    return [line.split()[2] for line in lines]


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_progress_counts_optimizer_steps_and_shows_the_last_one(caplog, accumulate):
    steps = _progress_steps(caplog, max_steps=5, accumulate_grad_batches=accumulate)
    assert steps == ["2/5", "4/5", "5/5"]


def test_progress_without_max_steps_ends_on_the_epoch_total(caplog):
    # 14 batches with accumulation 4: steps after batches 4, 8, 12 and the epoch's last batch (14)
    steps = _progress_steps(caplog, max_epochs=1, limit_train_batches=14, accumulate_grad_batches=4)
    assert steps[-1] == "4/4" and "0/4" not in steps


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from distillkit.utils.io import locked\n"
        f"with locked({str(path)!r}):\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({seconds})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_waiting_on_a_cache_lock_says_which_entry_and_who_holds_it(tmp_path, caplog):
    entry = tmp_path / "teachers" / "tiny-abc"
    holder = _hold_lock(entry, 3.0)
    try:
        assert lock_holder(entry).startswith(f"pid {holder.pid} on ")
        with caplog.at_level(logging.INFO, logger="distillkit"):
            started = time.perf_counter()
            with locked(entry):
                waited = time.perf_counter() - started
                assert lock_holder(entry).startswith(f"pid {os.getpid()} on ")
    finally:
        holder.wait(timeout=30)
    messages = [r.getMessage() for r in caplog.records if "waiting for the lock" in r.getMessage()]
    assert messages == [f"waiting for the lock on {entry} held by {lock_holder_text(holder.pid)}"]
    assert waited > 0.5  # it really waited for the other process
    assert lock_holder(entry) is None  # the sidecar goes with the lock


def lock_holder_text(pid: int) -> str:
    import socket

    return f"pid {pid} on {socket.gethostname()}"


def test_an_uncontended_lock_prints_nothing(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="distillkit"), locked(tmp_path / "x"):
        pass
    assert not [r for r in caplog.records if "waiting" in r.getMessage()]


def test_a_run_prints_each_event_once(tmp_path):
    """The whole job as a user starts it, without a terminal: Lightning's lines once, no litlogger
    tip, no HF progress bars, no bos/eos warnings of random init, the progress line reaches the last
    step with gradient accumulation, the teacher cache keeps no .work folder, and the summary table
    prints the whole results path."""
    out_dir = tmp_path / "a-folder-name-long-enough-that-the-results-path-passes-eighty-columns" / "run"
    overrides = [o for o in SMALL if not o.startswith("logger=")] + [
        "logger=csv",
        "trainer.max_steps=3",
        "trainer.accumulate_grad_batches=2",
        "callbacks.dev_rouge.max_prompts=2",
        "callbacks.dev_rouge.max_new_tokens=4",
        "eval.max_prompts=2",
        "eval.max_new_tokens=4",
        "model.teacher_sft.max_steps=3",
        f"hydra.run.dir={out_dir}",
    ]
    cache = tmp_path / "cache"  # its own cache: the teacher SFT runs, so there are two trainers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DISTILLKIT_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "distillkit.run", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = out.splitlines()
    # one line per trainer (teacher SFT, distillation), in Hydra's format; never Lightning's own copy
    assert sum("GPU available:" in line for line in lines) == 2, out
    assert not [line for line in lines if line.startswith("INFO: ")], out
    noises = (
        "Tip:",
        "Writing model shards",
        "Loading weights",
        "must be `None` or an integer within the vocabulary",
        "module(s) in eval mode",
        "Using default tokenizer",
    )
    for noise in noises:
        assert noise not in out, noise
    progress = [line for line in out.splitlines() if " train step " in line]
    assert len(progress) == 1 and "train step 3/3 " in progress[0], progress
    assert "step 0/" not in out
    teachers = sorted((cache / "teachers").iterdir())
    assert any((t / "config.json").is_file() for t in teachers)
    assert not [t for t in teachers if t.name.endswith(".work")], teachers
    assert any(str(out_dir / "results.json") in line for line in proc.stdout.splitlines()), proc.stdout
