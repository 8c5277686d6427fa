"""Every option of every config group composes; typos and bad values fail at compose time."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.helpers import REPO_GROUPS, compose_cfg, group_options


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in REPO_GROUPS for o in group_options(g)], ids=lambda x: str(x)
)
def test_every_option_composes(group, option):
    extra = {"ablation": ["method=mta"], "sra_ablation": ["method=sra"]}.get(group, [])  # MTA's / SRA's
    cfg = compose_cfg([f"{group}={option}", *extra])
    assert cfg.hydra.runtime.choices[group] == option
    if group not in (
        "experiment",
        "ablation",
        "sra_ablation",
        "hparams_search",
    ):  # those are `# @package _global_`
        assert group in cfg


def test_default_composes_to_the_tiny_offline_run():
    cfg = compose_cfg([])
    assert cfg.model.name == "tiny" and cfg.data.name == "synthetic" and cfg.method.name == "kd"
    assert cfg.model.teacher_sft.enabled is True


def test_typo_in_a_typed_group_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ConfigKeyError, HydraException)) as err:
        compose_cfg(["model.teacher.layerz=3"])
    assert "layerz" in str(err.value) or "layerz" in str(err.value.__cause__)


def test_wrong_type_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError, HydraException)):
        compose_cfg(["trainer.max_steps=ten"])


def test_bad_divergence_lists_valid_choices():
    with pytest.raises((ConfigCompositionException, ValidationError, HydraException)) as err:
        compose_cfg(["method.divergence=kld"])
    text = str(err.value) + str(err.value.__cause__)
    for name in ("fkl", "rkl", "srkl", "akl"):
        assert name in text


def test_unknown_method_lists_valid_methods_quickly():
    out = subprocess.run(
        [sys.executable, "-m", "distillkit.run", "method=nonsense"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "nonsense" in text
    for name in group_options("method"):
        assert name in text


def test_cfg_job_prints_the_composed_config():
    out = subprocess.run(
        [sys.executable, "-m", "distillkit.run", "--cfg", "job", "method=kd", "method.divergence=srkl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "divergence: srkl" in out.stdout


def test_term_switches_are_overrides_and_unknown_terms_fail_at_compose():
    cfg = compose_cfg(["method=mta", "method.terms.dsa=0"])
    assert cfg.method.terms.dsa == 0 and cfg.method.terms.hra == 1
    with pytest.raises((ConfigCompositionException, ConfigKeyError, HydraException)):
        compose_cfg(["method=kd", "method.terms.dsaa=0"])
