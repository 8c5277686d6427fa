"""Errors before expensive work (issue 13 items 8 and 10): every check that needs no weights runs
before any tokenizer training, teacher SFT, weight load or data preparation; closed choices fail
at compose time listing the valid values; user errors are one line without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from transformers import GPT2Config

from distillkit.errors import ConfigError, DataError, MethodSetupError, ModelLoadError, UserError
from distillkit.models.depth import check_model_path, model_depth
from distillkit.pipeline import train
from tests.helpers import SMALL, compose_cfg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_expensive(monkeypatch):
    """Any tokenizer, weight, teacher-SFT or data-preparation step fails the test."""

    def forbidden(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} ran before the config check")

        return fail

    from distillkit import pipeline

    monkeypatch.setattr(pipeline, "load_tokenizer", forbidden("a tokenizer load"))
    monkeypatch.setattr(pipeline, "load_model", forbidden("a weight load"))
    monkeypatch.setattr(pipeline, "ensure_sft_teacher", forbidden("the teacher SFT"))
    monkeypatch.setattr(pipeline, "DistillDataModule", forbidden("data preparation"))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["data.batch_size=-4"], ConfigError, r"data\.batch_size=-4; must be an integer >= 1"),
        (["data.eval_batch_size=0"], ConfigError, r"data\.eval_batch_size=0"),
        (["data.max_train_rows=0"], ConfigError, r"data\.max_train_rows=0; must be an integer >= 1 or null"),
        (["data.max_dev_rows=-1"], ConfigError, r"data\.max_dev_rows=-1"),
        (["data.max_total_tokens=100", "data.max_prompt_tokens=100"], ConfigError, "room for a response"),
        (["data.synthetic.n_train=0"], ConfigError, r"data\.synthetic\.n_train=0"),
        (["model.teacher_sft.batch_size=0"], ConfigError, r"model\.teacher_sft\.batch_size=0"),
        (["trainer.max_steps=0"], ConfigError, r"trainer\.max_steps=0; must be -1 \(no limit\) or >= 1"),
        (["trainer.max_steps=-1", "trainer.max_epochs=-1"], ConfigError, "would never end"),
        (["trainer.accumulate_grad_batches=0"], ConfigError, r"trainer\.accumulate_grad_batches=0"),
        (["trainer.optim.lr=0"], ConfigError, r"trainer\.optim\.lr=0"),
        (["trainer.optim.warmup_ratio=1.5"], ConfigError, r"warmup_ratio=1\.5; must be in \[0, 1\)"),
        (["onpolicy.enabled=true", "onpolicy.top_p=0"], ConfigError, r"onpolicy\.top_p=0"),
        (
            ["method=mta", "layer_map=explicit", "layer_map.teacher=[99]", "layer_map.student=[1]"],
            ConfigError,
            r"teacher indices \[99\] are out of range: the teacher has 4 layers",
        ),
        (
            ["method=mta", "layer_map=uniform", "layer_map.num_pairs=2", "model.student.layers=1"],
            None,  # a valid map on a shrunk student: passes the check (then fails on the forbidden load)
            "a tokenizer load ran",
        ),
        (
            ["model.student.init=pretrained", "model.student.path=/no/such/student"],
            ModelLoadError,
            r"model\.student\.path='/no/such/student' is not a folder",
        ),
        (
            ["model.student.init=pretrained", "model.student.path=nobody/no-such-model"],
            ModelLoadError,
            r"model\.student\.path='nobody/no-such-model' is an HF id that is neither in the local HF cache",
        ),
        (
            ["model.teacher.tokenizer=/no/such/tok"],
            ModelLoadError,
            r"model\.teacher\.tokenizer='/no/such/tok'",
        ),
        (["data=dolly", "data.root=/no/such/root"], DataError, "Data root '/no/such/root' is not a folder"),
    ],
)
def test_config_checks_run_before_anything_expensive(tmp_path, nothing_expensive, overrides, error, match):
    cfg = compose_cfg(SMALL + ["callbacks=none"] + overrides, tmp_path)
    with pytest.raises(error or AssertionError, match=match):
        train(cfg, tmp_path)


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("data.template=minilm", ["minillm", "chat", "none"]),
        ("trainer.optim.schedule=cosin", ["cosine", "constant", "linear"]),
        ("layer_map.kind=middle", ["reference", "explicit", "uniform", "last"]),
        ("data.on_bad_rows=ignore", ["fail", "skip"]),
    ],
)
def test_closed_choices_fail_at_compose_listing_the_valid_values(override, valid):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    text = str(err.value) + str(err.value.__cause__)
    assert all(v in text for v in valid), text


def test_choices_print_and_compare_as_their_value():
    cfg = compose_cfg(["data.template=none", "trainer.optim.schedule=linear"])
    t, s = cfg.data.template, cfg.trainer.optim.schedule
    assert (str(t), f"{t}", f"{s!s:>7}") == ("none", "none", " linear")
    assert t == "none" and {"linear": 1}[s] == 1


def test_error_classes_live_in_one_place():
    from distillkit import pipeline
    from distillkit.models import pair

    assert pipeline.ConfigError is ConfigError and pair.ModelLoadError is ModelLoadError
    for cls in (ConfigError, DataError, MethodSetupError, ModelLoadError):
        assert issubclass(cls, UserError)


# ----------------------------------------------------------------------------- model_depth
def test_model_depth_of_random_init_reads_arch_config_or_layers():
    cfg = compose_cfg([])
    assert model_depth(cfg.model.teacher, "teacher") == cfg.model.teacher.arch_config.n_layer == 4
    assert model_depth(cfg.model.student, "student") == 2
    assert (
        model_depth({"init": "random", "arch": "gpt2", "arch_config": {"n_layer": 5}, "layers": 3}, "x") == 3
    )
    assert model_depth({"init": "random", "arch": "llama", "arch_config": {"num_hidden_layers": 7}}, "x") == 7
    with pytest.raises(ModelLoadError, match=r"model\.student\.init=random needs model\.student\.arch"):
        model_depth({"init": "random"}, "student")
    with pytest.raises(ModelLoadError, match=r"model\.teacher\.arch='nope'"):
        model_depth({"init": "random", "arch": "nope"}, "teacher")


def test_model_depth_of_a_local_folder_reads_config_json_only(tmp_path):
    GPT2Config(n_layer=6, n_embd=32, n_head=2).save_pretrained(tmp_path / "m")  # no weights at all
    assert model_depth({"init": "pretrained", "path": str(tmp_path / "m")}, "teacher") == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="a local folder without a readable config.json"):
        model_depth({"init": "pretrained", "path": str(tmp_path / "empty")}, "teacher")
    with pytest.raises(ModelLoadError, match=r"model\.teacher\.path is empty"):
        model_depth({"init": "pretrained", "path": None}, "teacher")


def test_a_missing_absolute_path_says_it_is_not_a_folder(tmp_path):
    from distillkit.models.pair import load_model, load_tokenizer

    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file, not a folder"):
        check_model_path(str(tmp_path / "file.bin"), "model.student.path")
    check_model_path("gpt2", "model.student.path")  # an HF id is left to the hub / cache
    for call in (
        lambda: load_tokenizer("/no/such/dir", "student"),
        lambda: load_model(
            compose_cfg(
                [
                    "model.student.init=pretrained",
                    "model.student.path=/no/such/dir",
                    "model.student.tokenizer=null",
                ]
            ).model.student,
            "student",
        ),
    ):
        with pytest.raises(ModelLoadError) as err:
            call()
        assert "'/no/such/dir' is not a folder" in str(err.value) and "Repo id" not in str(err.value)


# ----------------------------------------------------------------------------- the command line
def _run_cli(tmp_path, *overrides, full_error=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env["DISTILLKIT_CACHE"] = str(tmp_path / "cold-cache")  # nothing cached: a cold start
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "distillkit.run", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_bad_layer_map_fails_before_any_training_in_one_line(tmp_path):
    """The issue's check: on a cold cache, `method=mta layer_map=explicit layer_map.teacher=[99]
    layer_map.student=[1]` stops at the config check (no tokenizer trained, no teacher, nothing
    cached), prints one line naming the depth and exits non-zero; HYDRA_FULL_ERROR=1 shows the
    traceback."""
    bad = ["method=mta", "layer_map=explicit", "layer_map.teacher=[99]", "layer_map.student=[1]"]
    proc = _run_cli(tmp_path, *bad)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "ConfigError" in ln]
    assert len(lines) == 1 and "teacher indices [99] are out of range: the teacher has 4 layers" in lines[0]
    cache = tmp_path / "cold-cache"
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    assert (tmp_path / "run" / "FAILED").is_file()  # the job's record keeps the traceback
    full = _run_cli(tmp_path, *bad, full_error=True)
    assert full.returncode != 0 and "Traceback" in full.stderr
