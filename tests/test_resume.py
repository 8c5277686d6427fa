"""Resume: exact at any step, refused for another config, one last.ckpt, honest exit status on preemption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from distillkit.callbacks.preemption import EXIT_PREEMPTED, PREEMPTED_MARKER
from distillkit.pipeline import ResumeMismatchError, train
from tests.helpers import SMALL, compose_cfg, stop_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]

#: 32 rows, 4 batches per epoch; last.ckpt only (no dev generation)
BASE = SMALL + [
    "callbacks=default",
    "~callbacks.dev_rouge",
    "~callbacks.lr_monitor",
    "callbacks.checkpoint.monitor=null",
    "callbacks.checkpoint.save_top_k=0",
    "data.synthetic.n_train=32",
    "data.batch_size=8",
    "trainer.max_steps=-1",
    "trainer.check_val_every_n_epoch=null",
    "model.teacher_sft.max_steps=2",
]
#: 3 epochs of 4 steps, a cosine schedule and dropout: every part of the state matters
EXACT = BASE + [
    "trainer.max_epochs=3",
    "trainer.optim.schedule=cosine",
    "model.student.arch_config.resid_pdrop=0.1",
    "model.student.arch_config.attn_pdrop=0.1",
]


def _weights(out):
    return {k: v.detach().clone() for k, v in out["module"].student.state_dict().items()}


def _step(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


# ----------------------------------------------------------------------------- the sampler
def test_the_sampler_continues_its_order_from_a_saved_position():
    from distillkit.data.datamodule import EpochSeededSampler

    sampler = EpochSeededSampler(20, seed=3)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = (sampler.state_dict(), it.state_dict())
    rest = list(it)
    assert sorted(head + rest) == list(range(20))  # one permutation
    fresh = EpochSeededSampler(20, seed=3)  # a new process: epoch 0 until the state says otherwise
    fresh.load_state_dict(state[0])
    resumed = iter(fresh)
    resumed.load_state_dict(state[1])
    assert list(resumed) == rest
    fresh.set_epoch(3)
    assert list(fresh) != head + rest  # another epoch, another order


# ----------------------------------------------------------------------------- exact resume
ACCUMULATE = ["trainer.accumulate_grad_batches=2", "data.synthetic.n_train=48"]  # 3 steps of 2 batches


@pytest.mark.parametrize(
    ("stops", "extra", "steps"),
    [((4,), [], 12), ((6,), [], 12), ((2, 7), [], 12), ((4,), ACCUMULATE, 9)],
    ids=["at_epoch_end", "mid_epoch", "twice_mid_epoch", "mid_epoch_accumulating"],
)
def test_resume_after_sigterm_equals_the_uninterrupted_run(tmp_path, stops, extra, steps):
    """SIGTERM at a step, resume=auto (again after a second SIGTERM): the final student equals the
    uninterrupted run's, bit for bit (data order, optimizer, schedule and dropout's RNG all continue)."""
    cfg = EXACT + extra
    full = train(compose_cfg(cfg + ["resume=never"], tmp_path / "full"), tmp_path / "full")
    run_dir = tmp_path / "stopped"
    for step in stops:
        with pytest.raises(SIGTERMException):
            train(compose_cfg(cfg + stop_at(step), run_dir), run_dir)
        assert _step(run_dir / "checkpoints" / "last.ckpt") == step  # right after the batch in flight
    resumed = train(compose_cfg(cfg, run_dir), run_dir)
    assert resumed["trainer"].global_step == full["trainer"].global_step == steps
    a, b = _weights(full), _weights(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_resumed_folders_keep_one_last_ckpt_at_the_final_step_and_no_versions(tmp_path):
    """SIGTERM, resume, SIGTERM, resume, and a third run: only last.ckpt (the final step) and the best
    two by val/loss; no last-v1.ckpt or step*-v1.ckpt, and the third run trains nothing."""
    cfg = BASE + [
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        "callbacks.checkpoint.monitor=val/loss",
        "callbacks.checkpoint.mode=min",
        "callbacks.checkpoint.save_top_k=2",
    ]
    folder = tmp_path / "checkpoints"
    for step in (2, 6):
        with pytest.raises(SIGTERMException):
            train(compose_cfg(cfg + stop_at(step), tmp_path), tmp_path)
        assert _step(folder / "last.ckpt") == step
    done = train(compose_cfg(cfg, tmp_path), tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    best = sorted(Path(p).name for p in done["trainer"].checkpoint_callback.best_k_models)
    assert len(best) == 2 and names == sorted(["last.ckpt", "train_config.json", *best]), names
    assert not any("-v" in n for n in names)
    assert _step(folder / "last.ckpt") == 12
    again = train(compose_cfg(cfg, tmp_path), tmp_path)
    assert again["trainer"].global_step == 12
    assert sorted(p.name for p in folder.iterdir()) == names


# ----------------------------------------------------------------------------- config check
def test_resume_refuses_a_checkpoint_of_another_training_config_before_loading_anything(
    tmp_path, monkeypatch
):
    first = BASE + ["trainer.max_epochs=1"]
    train(compose_cfg(first, tmp_path), tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"

    def loaded(*args, **kwargs):
        raise AssertionError("something was loaded before the resume check")

    with monkeypatch.context() as m:  # the check reads train_config.json: no weights, no checkpoint
        m.setattr("distillkit.pipeline.load_model", loaded)
        m.setattr("distillkit.pipeline.ensure_sft_teacher", loaded)
        m.setattr("distillkit.pipeline.load_tokenizer", loaded)
        m.setattr(torch, "load", loaded)
        with pytest.raises(ResumeMismatchError) as err:
            train(compose_cfg(first + ["method.divergence=rkl", "trainer.optim.lr=1e-4"], tmp_path), tmp_path)
    msg = str(err.value)
    assert str(ckpt) in msg
    changed = [line.strip() for line in msg.splitlines() if " -> " in line]
    assert changed == ["method.divergence: 'fkl' -> 'rkl'", "trainer.optim.lr: 0.002 -> 0.0001"]
    for way_out in ("hydra.run.dir=", "resume=never", "resume_accept_changes=true"):
        assert way_out in msg
    from distillkit.errors import ReportedUserError
    from distillkit.run import _task

    # the entry point reports it as one line; the folder stays as its run left it: no FAILED
    with pytest.raises(ReportedUserError) as reported:
        _task(compose_cfg(first + ["method.divergence=rkl"], tmp_path))
    assert isinstance(reported.value.__cause__, ResumeMismatchError)
    assert not (tmp_path / "FAILED").exists()

    # without train_config.json the record is read from the checkpoint itself
    (tmp_path / "checkpoints" / "train_config.json").unlink()
    with pytest.raises(ResumeMismatchError, match="method.name: .kd. -> .sft."):
        train(compose_cfg(first + ["method=sft"], tmp_path), tmp_path)

    # a checkpoint without any record (older distillkit) is refused too
    state = torch.load(ckpt, weights_only=False)
    del state["distillkit"]
    torch.save(state, ckpt)
    with pytest.raises(ResumeMismatchError, match="no training config recorded"):
        train(compose_cfg(first, tmp_path), tmp_path)


def test_resume_goes_on_when_only_paths_logging_or_evaluation_changed(tmp_path):
    first = BASE + ["trainer.max_epochs=1"]
    train(compose_cfg(first, tmp_path), tmp_path)
    cosmetic = [
        "eval.max_prompts=3",
        "data.eval_batch_size=4",
        "data.max_dev_rows=5",
        "trainer.log_every_n_steps=7",
        "callbacks.checkpoint.save_top_k=1",
        "experiment_name=renamed",
        "final_eval=false",
        f"cache_dir={os.environ['DISTILLKIT_CACHE']}/",  # the same cache, spelt another way
    ]
    out = train(compose_cfg(first + cosmetic, tmp_path), tmp_path)
    assert out["trainer"].global_step == 4 and "accepted_changes" not in out["resume"]


def test_resume_accept_changes_continues_and_records_what_changed(tmp_path):
    train(compose_cfg(BASE + ["trainer.max_epochs=1"], tmp_path), tmp_path)
    longer = BASE + ["trainer.max_epochs=2", "trainer.optim.lr=1e-4", "resume_accept_changes=true"]
    out = train(compose_cfg(longer, tmp_path), tmp_path)
    assert out["trainer"].global_step == 8  # continued from step 4, not from scratch
    assert out["resume"]["accepted_changes"] == {
        "trainer.max_epochs": {"old": 1, "new": 2},
        "trainer.optim.lr": {"old": 0.002, "new": 0.0001},
    }


# ----------------------------------------------------------------------------- exit status and markers
def test_a_preempted_run_exits_75_marks_its_folder_and_the_resume_clears_the_marks(tmp_path):
    from distillkit.run import _task

    cfg = BASE + ["trainer.max_epochs=2", "final_eval=false", "export=false"]
    (tmp_path / "FAILED").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "FAILED").write_text("a crash of an earlier attempt\n")
    with pytest.raises(SystemExit) as stop:
        _task(compose_cfg(cfg + stop_at(3), tmp_path))
    assert stop.value.code == EXIT_PREEMPTED == 75
    marker = json.loads((tmp_path / PREEMPTED_MARKER).read_text())
    assert marker["signal"] == "SIGTERM" and marker["step"] == 3 and marker["requeued"] is False
    assert marker["checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert not (tmp_path / "FAILED").exists() and not (tmp_path / "results.json").exists()
    _task(compose_cfg(cfg, tmp_path))  # the resume completes
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == 8 and results["resume"]["checkpoint"].endswith("last.ckpt")
    assert not (tmp_path / PREEMPTED_MARKER).exists() and not (tmp_path / "FAILED").exists()


def test_submitit_requeue_waits_until_the_checkpoint_is_saved(tmp_path, monkeypatch):
    """Under submitit its handler for the preemption signal requeues the job and exits at once; the
    callback holds it back until last.ckpt is on disk and the folder is marked, then calls it."""
    from distillkit.run import _stop_preempted

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    last = tmp_path / "checkpoints" / "last.ckpt"
    calls = []

    def submitit_handler(signum, frame):
        calls.append((signum, last.is_file() and _step(last), (tmp_path / PREEMPTED_MARKER).is_file()))

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SIGTERMException) as err:
            train(compose_cfg(BASE + ["trainer.max_epochs=2"] + stop_at(2, "SIGUSR2"), tmp_path), tmp_path)
        assert calls == []  # not during the batch
        info = err.value.preemption
        assert info.signal == "SIGUSR2" and info.step == 2 and info.requeue is not None
        with pytest.raises(SystemExit) as stop:  # a real submitit handler exits itself
            _stop_preempted(err.value)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [(signal.SIGUSR2, 2, True)]
    assert stop.value.code == EXIT_PREEMPTED
    assert json.loads((tmp_path / PREEMPTED_MARKER).read_text())["requeued"] is True


@pytest.mark.slow
def test_the_cli_exits_with_the_preempted_status_on_sigterm(tmp_path):
    overrides = BASE + ["trainer.max_epochs=2", "final_eval=false", *stop_at(2), f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "distillkit.run", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr[-3000:]
    assert (tmp_path / PREEMPTED_MARKER).is_file() and not (tmp_path / "results.json").exists()
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 2
