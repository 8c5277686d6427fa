"""`python -m distillkit.evaluate`: an HF folder, a Lightning .ckpt with the exported student, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import GPT2Config, GPT2LMHeadModel

from distillkit.errors import ConfigError, DataError, ModelLoadError
from distillkit.evaluate import load_model, run_evaluation, student_state_dict
from distillkit.utils.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    {"prompt": "Question: name a colour.\nAnswer:", "output": "red"},
    {"instruction": "Give a fruit.", "input": "", "output": ["apple", "pear"]},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def setup(tmp_path, gpt2_tokenizer):
    torch.manual_seed(3)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=128, vocab_size=len(gpt2_tokenizer))
    )
    run = tmp_path / "run"
    model.save_pretrained(run / "student")
    gpt2_tokenizer.save_pretrained(run / "student")
    data = tmp_path / "data"
    (data / "dolly").mkdir(parents=True)
    (data / "dolly" / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return model, run, data


def cfg_for(model_path, data_root, *extra):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                f"model_path={model_path}",
                f"data_root={data_root}",
                "eval=smoke",
                "eval.max_new_tokens=8",
                "eval.max_prompts=2",
                "device=cpu",
                *extra,
            ],
        )


def test_evaluates_an_hf_folder(setup, tmp_path):
    _, run, data = setup
    out = tmp_path / "out"
    record = run_evaluation(cfg_for(run / "student", data), out)
    written = json.loads((out / "eval_results.json").read_text())
    assert written == json.loads(json.dumps(record))
    ev = written["eval"]
    assert ev["protocol"] == "smoke" and ev["sets"]["dolly"]["n_prompts"] == 2
    assert set(ev["missing_sets"]) == {"self-inst", "vicuna", "sinst", "uinst"}
    assert ev["avg"] == pytest.approx(ev["sets"]["dolly"]["mean"])
    assert len(read_jsonl(out / "predictions" / "dolly.jsonl")) == 2


def test_a_ckpt_loads_the_student_weights_into_the_exported_model(setup, tmp_path):
    model, run, _ = setup
    torch.manual_seed(99)
    trained = GPT2LMHeadModel(model.config)  # different weights than the exported student
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "step10.ckpt"
    state = {f"student.{k}": v for k, v in trained.state_dict().items()}
    state["teacher.transformer.wte.weight"] = torch.zeros(3)  # other modules are ignored
    torch.save({"state_dict": state, "global_step": 10}, ckpt)

    loaded, hf_dir = load_model(ckpt, "cpu", "float32")
    assert hf_dir == run / "student"
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not torch.equal(
        loaded.state_dict()["transformer.wte.weight"], model.state_dict()["transformer.wte.weight"]
    )

    nested = {f"student.model.{k}": v for k, v in trained.state_dict().items()}
    assert set(student_state_dict({"state_dict": nested}, set(trained.state_dict()))) == set(
        trained.state_dict()
    )


def test_ckpt_without_exported_student_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "lone.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ModelLoadError, match="no exported HF student"):
        load_model(ckpt, "cpu")


def test_bad_inputs_fail_before_loading(setup, tmp_path):
    _, run, data = setup
    with pytest.raises(ModelLoadError, match="model_path .* does not exist"):
        run_evaluation(cfg_for(tmp_path / "nope", data), tmp_path / "o")
    with pytest.raises(DataError, match="data_root .* is not a folder"):
        run_evaluation(cfg_for(run / "student", tmp_path / "nodata"), tmp_path / "o")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="evaluate", overrides=[f"model_path={run}", "eval=none", f"data_root={data}"]
            )
        run_evaluation(cfg, tmp_path / "o")
    with pytest.raises(ConfigError, match="valid: auto, float32"):
        load_model(run / "student", "cpu", "fp8")
    with pytest.raises(ModelLoadError, match="tokenizer_path='/no/such/tok' is not a folder"):
        run_evaluation(cfg_for(run / "student", data, "tokenizer_path=/no/such/tok"), tmp_path / "o")


def test_dtype_is_a_closed_choice_at_compose_time(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        cfg_for(tmp_path, tmp_path, "dtype=fp8")
    text = str(err.value) + str(err.value.__cause__)
    assert all(name in text for name in ("auto", "float32", "bfloat16", "float16"))


def test_cli_reports_a_missing_model_path(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillkit.evaluate",
            f"model_path={tmp_path / 'absent'}",
            f"data_root={tmp_path}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


def test_a_run_students_evaluation_uses_the_runs_training_template(setup, tmp_path):
    from distillkit.data.template import format_prompt

    _, run, data = setup
    (run / "results.json").write_text(json.dumps({"config": {"data": {"template": "none"}}}))
    record = run_evaluation(cfg_for(run / "student", data), tmp_path / "a")
    assert record["eval"]["template"] == "none" and "results.json" in record["eval"]["template_source"]
    prompts = [p["prompt"] for p in read_jsonl(tmp_path / "a" / "predictions" / "dolly.jsonl")]
    assert prompts == [ROWS[0]["prompt"], format_prompt(ROWS[1], "none")]  # a `prompt` field is kept
    explicit = run_evaluation(cfg_for(run / "student", data, "eval.template=minillm"), tmp_path / "b")
    assert (explicit["eval"]["template"], explicit["eval"]["template_source"]) == ("minillm", "eval.template")
    prompts = [p["prompt"] for p in read_jsonl(tmp_path / "b" / "predictions" / "dolly.jsonl")]
    assert prompts[1] == format_prompt(ROWS[1], "minillm")
    (run / "results.json").unlink()  # a model no run exported: the papers' template
    outside = run_evaluation(cfg_for(run / "student", data), tmp_path / "c")
    assert (outside["eval"]["template"], outside["eval"]["template_source"]) == ("minillm", "default")


def _evaluate_cli(tmp_path, *args, full_error=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "distillkit.evaluate", *args],
        cwd=tmp_path,  # so that a stray outputs/ folder would appear here
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_user_error_is_one_line_and_out_dir_is_the_only_folder(tmp_path):
    """A missing model folder: one line naming it, exit 1, no traceback (HYDRA_FULL_ERROR=1 shows it);
    with out_dir= set nothing is created under outputs/ (Hydra's files go into out_dir)."""
    args = [f"model_path={tmp_path / 'absent'}", f"data_root={tmp_path}", f"out_dir={tmp_path / 'o'}"]
    proc = _evaluate_cli(tmp_path, *args)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "ModelLoadError" in ln]
    assert len(lines) == 1 and f"model_path {str(tmp_path / 'absent')!r} does not exist" in lines[0]
    assert not (tmp_path / "outputs").exists()
    assert (tmp_path / "o" / ".hydra" / "config.yaml").is_file()
    full = _evaluate_cli(tmp_path, *args, full_error=True)
    assert full.returncode != 0 and "Traceback" in full.stderr
