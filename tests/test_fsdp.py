"""``strategy=fsdp`` (FSDP2 through Lightning's ModelParallelStrategy) and ``strategy=fsdp1``.

The fast tests compose the configs and check the refusals. The slow ones run ``python -m distillkit.run
strategy=fsdp strategy.accelerator=cpu strategy.devices=2`` as a subprocess (Lightning launches the second
rank by re-running the command, so it cannot run inside pytest's process), with
:class:`tests.fsdp_probe.FSDPProbe` reporting from inside each rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from distillkit.errors import ConfigError
from tests.helpers import SMALL, compose_cfg

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fast: configs
def test_fsdp_composes_to_fsdp2_model_parallel():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from distillkit.strategies import FSDP2_TARGET, is_fsdp2

    cfg = compose_cfg(["strategy=fsdp", "strategy.strategy.activation_checkpointing=true"])
    s = cfg.strategy
    assert s.strategy._target_ == FSDP2_TARGET and s.devices == 2 and s.precision == "32-true"
    strategy = instantiate(s.strategy)
    assert isinstance(strategy, ModelParallelStrategy) and is_fsdp2(strategy)
    assert strategy.activation_checkpointing is True and strategy.teacher_cpu_offload is False
    assert "GPT2Block" in strategy.block_names and strategy.teacher_param_dtype is None


def test_fsdp1_composes_to_the_classic_fsdp_strategy():
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_cfg(["strategy=fsdp1"])
    assert cfg.strategy.strategy._target_ == "distillkit.strategies.fsdp1"
    assert cfg.strategy.accelerator == "gpu" and cfg.strategy.precision == "bf16-mixed"
    assert isinstance(instantiate(cfg.strategy.strategy), FSDPStrategy)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["strategy.strategy.block_classes=[GPT2Blok]"], ["GPT2Blok", "GPT2Block", "LlamaDecoderLayer"]),
        (
            ["strategy.accelerator=cpu", "strategy.strategy.teacher_cpu_offload=true"],
            ["teacher_cpu_offload=true", "accelerator=cpu"],
        ),
        (["strategy.strategy.teacher_param_dtype=float16"], ["float16", "bfloat16"]),
        (["strategy.devices=0"], ["strategy.devices=0"]),
    ],
)
def test_bad_fsdp_settings_fail_before_anything_loads(overrides, words):
    from distillkit.checks import validate

    cfg = compose_cfg(SMALL + ["strategy=fsdp"] + overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    for word in words:
        assert word in str(err.value)


def test_teacher_sft_runs_on_one_process_under_fsdp():
    """The other ranks re-run the command and would wait on the teacher cache's lock: one process trains it,
    and its cache key says so (the same teacher as strategy=single's)."""
    from distillkit.pipeline import sft_teacher_key, teacher_sft_config

    fsdp = compose_cfg(SMALL + ["strategy=fsdp", "strategy.accelerator=cpu"])
    tcfg = teacher_sft_config(fsdp)
    assert tcfg.strategy.devices == 1 and tcfg.strategy.strategy == "auto"
    assert sft_teacher_key(fsdp) == sft_teacher_key(compose_cfg(SMALL))
    # plain ddp (ranks re-run by Lightning, or SLURM tasks) too; ddp_spawn spawns inside fit and keeps its 2
    ddp = teacher_sft_config(compose_cfg(SMALL + ["strategy=ddp", "strategy.num_nodes=2"]))
    assert (ddp.strategy.devices, ddp.strategy.num_nodes, ddp.strategy.strategy) == (1, 1, "auto")
    assert teacher_sft_config(compose_cfg(SMALL + ["strategy=ddp_spawn"])).strategy.devices == 2


# ----------------------------------------------------------------------------- slow: 2 CPU processes
def _fsdp_args(method: str, run_dir: Path, steps: int, probe: Path) -> list[str]:
    return [
        "strategy=fsdp",
        "strategy.accelerator=cpu",
        "strategy.devices=2",
        f"method={method}",
        f"hydra.run.dir={run_dir}",
        "data.synthetic.n_train=64",
        "data.synthetic.n_dev=16",
        "data.synthetic.n_test=8",
        "data.batch_size=4",  # per device: a global batch of 8
        "model.teacher_sft.max_steps=4",
        "model.teacher_sft.batch_size=8",
        "trainer.max_epochs=1",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "~callbacks.dev_rouge",
        "~callbacks.lr_monitor",
        "callbacks.checkpoint.monitor=null",
        "callbacks.checkpoint.save_top_k=1",
        "+callbacks.checkpoint.every_n_train_steps=2",
        "eval.max_prompts=4",
        "eval.max_new_tokens=8",
        "+callbacks.probe._target_=tests.fsdp_probe.FSDPProbe",
        f"+callbacks.probe.out={probe}",
    ]


def _run(args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "distillkit.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _probes(folder: Path) -> list[dict]:
    reports = [json.loads((folder / f"probe-rank{r}.json").read_text()) for r in range(2)]
    for r in reports:
        assert r["strategy"] == "FSDP2Strategy" and r["world_size"] == 2
        assert (
            r["trainable_not_dtensor"] == []
        )  # every trainable parameter is sharded: its gradient is reduced
        # the teacher: sharded, frozen, no gradient, outside the optimizer, unchanged
        assert r["teacher_params"] > 0 and r["teacher_dtensor"] == r["teacher_params"]
        assert r["teacher_requires_grad"] == 0 and r["teacher_grads"] == 0
        assert r["teacher_in_optimizer"] == 0 and r["teacher_with_optimizer_state"] == 0
        assert r["teacher_changed"] == 0
        assert r["student_changed"] > 0
        assert r["method_in_optimizer"] == r["method_trainable"]
        if r["method_trainable"]:
            assert r["method_changed"] > 0 and "method" in r["units"]
        # separate units: each decoder block of both models, then each root
        for role, blocks in (("teacher", 4), ("student", 2)):
            assert role in r["units"]
            assert sum(u.startswith(f"{role}.") for u in r["units"]) == blocks, r["units"]
        assert all(u.split(".")[0] in ("teacher", "student", "method") for u in r["units"])
    return reports


def _dcp_keys(ckpt: Path) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "mta"])
def test_fsdp2_on_two_cpu_processes_trains_checkpoints_resumes_and_exports(method, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    _run(_fsdp_args(method, run_dir, 2, tmp_path / "probe1"))
    first = _probes(tmp_path / "probe1")
    assert [r["global_step"] for r in first] == [2, 2]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 2 and results["batch"]["effective"] == 8
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file()  # a folder of DCP shards
    keys = _dcp_keys(last)
    assert any(k.startswith("state_dict.student.") for k in keys)
    assert not any(".teacher." in k or k.startswith("state_dict.teacher") for k in keys)  # no teacher
    assert any(k.startswith("optimizer_0.state.student.") for k in keys)
    if method == "mta":  # the projectors are checkpointed with their optimizer state
        assert any(k.startswith("state_dict.method.") for k in keys)
        assert any(k.startswith("optimizer_0.state.method.") for k in keys)

    # resume from the sharded last.ckpt: the step count goes on
    out = _run(_fsdp_args(method, run_dir, 4, tmp_path / "probe2") + ["resume_accept_changes=true"])
    assert "Restored all states from the checkpoint" in out
    second = _probes(tmp_path / "probe2")
    assert [r["global_step"] for r in second] == [4, 4]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 4 and results["resume"]["checkpoint"] == str(last)
    assert results["best_checkpoint"].endswith("step4.ckpt")

    # the exported student: a full HF model, the gathered trained weights
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "student").eval()
    gathered = torch.load(tmp_path / "probe2" / "gathered-student.pt")
    reference = AutoModelForCausalLM.from_config(exported.config).eval()
    reference.load_state_dict(gathered, strict=False)
    reference.tie_weights()
    ids = torch.randint(0, exported.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, reference(ids).logits, atol=1e-6)
    fresh = AutoModelForCausalLM.from_config(exported.config).eval()
    with torch.no_grad():
        assert not torch.allclose(exported(ids).logits, fresh(ids).logits, atol=1e-3)


@pytest.mark.slow
def test_fsdp2_on_two_processes_equals_one_process(tmp_path):
    """FSDP2 with 2 ranks x 4 rows trains like one process on 8 rows: the same global batches (the
    world-size-independent ``EpochSeededSampler``, tests/test_ddp.py), gradients reduce-scattered as
    means. On rows of one shape (``uniform_rows``: equal token counts per rank, so per-rank means average
    to the global mean) kd's final weights agree up to float rounding; another sample order moves them
    by about 1e-2 (tests/test_ddp.py), so a wrong sampler fails here."""
    from distillkit.pipeline import train
    from tests.test_ddp import uniform_rows

    rows = uniform_rows(tmp_path / "rows")
    common = rows + [
        "method=kd",
        "trainer.max_steps=4",
        "trainer.optim.warmup_steps=0",
        "model.teacher_sft.enabled=false",
    ]
    one_dir = tmp_path / "one"
    one = train(compose_cfg(SMALL + common + ["callbacks=none", "data.batch_size=8"], one_dir), one_dir)
    args = _fsdp_args("kd", tmp_path / "fsdp", 4, tmp_path / "probe") + common
    _run([a for a in args if not a.startswith("data.synthetic")])
    gathered = torch.load(tmp_path / "probe" / "gathered-student.pt")
    mine = one["module"].student.state_dict()
    shared = [k for k in gathered if k in mine]
    assert len(shared) >= len(mine) - 1  # (a tied head may be stored once)
    worst = max(float((gathered[k].float() - mine[k].float()).abs().max()) for k in shared)
    print(f"fsdp2 vs one process: max |w diff| {worst:.2e}")
    assert worst < 1e-4, worst
