"""Scaling without launching processes: the DDP sampler, loader settings, dtype and precision rules, the
frozen teacher under bf16, and the SLURM path (launcher config and Lightning's environment detection)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillkit.data.datamodule import EpochSeededSampler, loader_settings
from distillkit.models.pair import resolve_dtype
from distillkit.pipeline import build_trainer, train
from tests.helpers import SMALL, compose_cfg, record_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize(("n", "world", "batch"), [(32, 2, 4), (30, 2, 4), (35, 4, 2)])
def test_each_step_of_the_ranks_is_the_one_process_global_batch(n, world, batch):
    one = EpochSeededSampler(n, seed=5)
    one.set_epoch(3)
    order = list(one)
    assert sorted(order) == list(range(n)) and order == one.global_order(3)
    ranks = []
    for r in range(world):
        s = EpochSeededSampler(n, seed=5, num_replicas=world, rank=r)
        s.set_epoch(3)
        ranks.append(list(s))
        assert len(s) == math.ceil(n / world) == len(ranks[-1])
    global_batch = world * batch
    for k in range(n // global_batch):  # every full global batch: the same samples, rank r at r::world
        step = order[k * global_batch : (k + 1) * global_batch]
        for r in range(world):
            assert ranks[r][k * batch : (k + 1) * batch] == step[r::world]
    # every sample is seen; the padding repeats the first ones, as torch's DistributedSampler does
    assert set().union(*map(set, ranks)) == set(range(n))


def test_lightning_keeps_the_sampler_under_ddp():
    """Lightning wraps any sampler that is not a ``DistributedSampler`` in its ``DistributedSamplerWrapper``,
    which re-shuffles with its own seed (a world-size-dependent order); ours is one, and is kept."""
    from distillkit.data.datamodule import DistillDataModule
    from distillkit.models.pair import load_tokenizer

    cfg = compose_cfg(SMALL + ["strategy=ddp", "strategy.accelerator=cpu", "strategy.precision=32-true"])
    trainer = build_trainer(cfg, __import__("pathlib").Path("/tmp/unused"), with_callbacks=False)
    assert trainer.world_size == 2 and trainer.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}
    tok = load_tokenizer(cfg.model.student.tokenizer, "student", cfg.cache_dir)
    dm = DistillDataModule(cfg.data, tok, tok, shared_tokenizer=True)
    dm.setup()
    dm.trainer = trainer
    loader = dm.train_dataloader()
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 0)
    assert not trainer._data_connector._requires_distributed_sampler(loader)
    assert trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=None) is loader


# ----------------------------------------------------------------------------- loaders
def test_loader_workers_and_pinned_memory_follow_the_accelerator():
    cfg = compose_cfg(SMALL).data
    assert cfg.num_workers is None and cfg.pin_memory is None  # the default: decided per accelerator
    assert loader_settings(cfg, on_gpu=False) == {"num_workers": 0, "pin_memory": False}
    assert loader_settings(cfg, on_gpu=True, local_processes=8, cpus=96) == {
        "num_workers": 4,
        "pin_memory": True,
    }
    assert loader_settings(cfg, on_gpu=True, local_processes=8, cpus=16) == {
        "num_workers": 1,
        "pin_memory": True,
    }
    assert loader_settings(cfg, on_gpu=True, local_processes=1, cpus=1)["num_workers"] == 0
    explicit = compose_cfg(SMALL + ["data.num_workers=2", "data.pin_memory=false"]).data
    assert loader_settings(explicit, on_gpu=True) == {"num_workers": 2, "pin_memory": False}


def test_a_batch_pins_every_tensor(monkeypatch):
    """``pin_memory=True`` calls ``Batch.pin_memory`` (a dataclass without it stays unpinned); CPU-only
    torch cannot pin, so the tensor method is stubbed to mark what it touched."""
    from distillkit.data.datamodule import DistillDataModule, collate
    from distillkit.models.pair import load_tokenizer

    cfg = compose_cfg(SMALL)
    tok = load_tokenizer(cfg.model.student.tokenizer, "student", cfg.cache_dir)
    dm = DistillDataModule(cfg.data, tok, tok, shared_tokenizer=True)
    dm.setup()
    batch = collate(dm.examples["train"][:4])
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t.clone())
    out = batch.pin_memory()
    assert out.teacher is out.student and torch.equal(out.student.input_ids, batch.student.input_ids)
    assert len(pinned) == 5  # input_ids, attention_mask, labels, offsets, index


# ----------------------------------------------------------------------------- dtypes
def test_the_teacher_defaults_to_bf16_on_a_gpu_and_float32_on_a_cpu(monkeypatch):
    cfg = compose_cfg(SMALL + ["model=gpt2-xl-to-gpt2"])
    assert str(cfg.model.teacher.dtype) == "auto" and str(cfg.model.student.dtype) == "auto"
    assert resolve_dtype("auto", frozen=True, accelerator="cpu") == torch.float32
    assert resolve_dtype("auto", frozen=True, accelerator="auto") == (
        torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", frozen=True, accelerator="gpu") == torch.bfloat16
    assert resolve_dtype("auto", frozen=True, accelerator="auto") == torch.bfloat16
    assert resolve_dtype("auto", frozen=True, accelerator="cpu") == torch.float32
    assert resolve_dtype("auto", frozen=False, accelerator="gpu") == torch.float32  # a trained model
    assert resolve_dtype("float32", frozen=True, accelerator="gpu") == torch.float32
    assert resolve_dtype("bfloat16", frozen=False, accelerator="cpu") == torch.bfloat16


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize(
    ("strategy", "method"), [("bf16", "kd"), ("bf16", "mta"), ("bf16_true", "kd"), ("bf16_true", "mta")]
)
def test_loss_terms_are_float32_and_the_teacher_frozen_under_bf16(strategy, method, tmp_path):
    cfg = compose_cfg(
        SMALL
        + [f"strategy={strategy}", "callbacks=none", f"method={method}", "trainer.max_steps=2"]
        + record_steps(tmp_path / "rec"),
        tmp_path,
    )
    out = train(cfg, tmp_path)
    assert out["trainer"].precision == {"bf16": "bf16-mixed", "bf16_true": "bf16-true"}[strategy]
    rec = json.loads((tmp_path / "rec" / "steps.rank0.json").read_text())
    for step in rec["steps"]:  # computed under the precision plugin's context, as in training_step
        assert step["terms"]["dtypes"] == ["torch.float32"], step["terms"]
        assert all(math.isfinite(v) for k, v in step["terms"].items() if k != "dtypes")
    frozen = rec["frozen"]
    assert frozen["teacher_params"] > 0 and frozen["requires_grad"] == 0 and frozen["in_optimizer"] == 0
    expected = "torch.bfloat16" if strategy == "bf16_true" else "torch.float32"
    assert frozen["student_dtype"] == expected
    state = torch.load(tmp_path / "rec" / "end.ckpt", weights_only=False)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)


# ----------------------------------------------------------------------------- SLURM
def test_the_slurm_launcher_config_follows_the_strategy():
    cfg = compose_cfg(
        ["hydra/launcher=slurm_example", "strategy=ddp", "strategy.devices=8", "strategy.num_nodes=2"]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == cfg.strategy.devices == 8
    assert launcher.gpus_per_node == 8 and launcher.nodes == cfg.strategy.num_nodes == 2


SLURM_TASK = {  # task 9 of a 2 nodes x 8 GPUs job: node 1, local rank 1
    "SLURM_NTASKS": "16",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "distillkit",
    "SLURM_NODELIST": "gpu[01-02]",
}


def _keep_rank_zero(monkeypatch) -> None:
    """Building a trainer with a task's ranks sets Lightning's process-wide ``rank_zero_only.rank`` (to 9
    here): restored after the test, or every later run in this process would log as a non-zero rank."""
    import lightning.fabric.utilities.rank_zero as fabric_rank
    import lightning.pytorch.utilities.rank_zero as pl_rank
    from lightning_utilities.core import rank_zero as utils_rank

    for module in (fabric_rank, pl_rank, utils_rank):
        monkeypatch.setattr(module.rank_zero_only, "rank", getattr(module.rank_zero_only, "rank", 0))


def test_under_slurm_the_trainer_takes_the_ranks_from_slurm_and_spawns_nothing(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    _keep_rank_zero(monkeypatch)

    for key in [k for k in __import__("os").environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    assert SLURMEnvironment.detect()
    # the GPU strategy as configured, on CPU devices so that it builds here (8 per node, 2 nodes)
    cfg = compose_cfg(
        SMALL
        + [
            "strategy=ddp",
            "strategy.devices=8",
            "strategy.num_nodes=2",
            "strategy.accelerator=cpu",
            "strategy.precision=32-true",
        ]
    )
    trainer = build_trainer(cfg, __import__("pathlib").Path("/tmp/unused"), with_callbacks=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (16, 9, 1, 1)
    # Lightning's launcher runs child scripts only when the environment does not create the processes:
    # under SLURM it calls the job in this process, no re-run of the Hydra script (Lightning #11300)
    launcher = trainer.strategy.launcher
    assert launcher is None or launcher.cluster_environment.creates_processes_externally
    assert env.main_address == "gpu01"


def _multirun(cfg):
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
    return cfg


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_relaunching_strategy_under_a_local_multirun_is_refused_before_anything_loads(
    strategy, monkeypatch
):
    """Lightning #11300: under `-m` without SLURM or torchrun, the re-run ranks would each run the sweep."""
    from distillkit.checks import validate
    from distillkit.errors import ConfigError

    for key in [k for k in __import__("os").environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = _multirun(compose_cfg(SMALL + [f"strategy={strategy}", "strategy.accelerator=cpu"]))
    with pytest.raises(ConfigError, match=r"#11300.*strategy=ddp_spawn.*hydra/launcher=slurm_example"):
        validate(cfg)
    validate(compose_cfg(SMALL + [f"strategy={strategy}", "strategy.accelerator=cpu"]))  # a single run: fine
    validate(_multirun(compose_cfg(SMALL + ["strategy=ddp_spawn"])))  # spawned from the job: fine
    validate(_multirun(compose_cfg(SMALL + [f"strategy={strategy}", "strategy.devices=1"])))  # one process
    for key, value in SLURM_TASK.items():  # SLURM tasks (the submitit launcher) make the processes
        monkeypatch.setenv(key, value)
    validate(cfg)
