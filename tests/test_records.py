"""What a run records and evaluates on: the training template, the teacher's cache key, provenance."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from distillkit.data.template import format_prompt
from distillkit.pipeline import ensure_sft_teacher, git_state, sft_teacher_key, teacher_sft_config
from distillkit.run import final_evaluation, run
from distillkit.utils.io import read_jsonl
from tests.helpers import SMALL, compose_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = SMALL + [
    "callbacks.dev_rouge.max_prompts=4",
    "callbacks.dev_rouge.max_new_tokens=4",
    "~callbacks.lr_monitor",
    "eval.max_prompts=4",
    "eval.max_new_tokens=4",
    "trainer.max_steps=-1",  # one epoch of 8 steps, then dev ROUGE-L
]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def prompts_seen(monkeypatch):
    """Every prompt the dev ROUGE-L callback and the final evaluation generate from, by caller."""
    import distillkit.eval.generate as generate
    import distillkit.eval.harness as harness

    seen: dict[str, list[str]] = {"dev": [], "eval": []}
    real = generate.generate_responses

    def recording(into):
        def wrapper(model, tokenizer, prompts, **kwargs):
            seen[into].extend(prompts)
            return real(model, tokenizer, prompts, **kwargs)

        return wrapper

    monkeypatch.setattr(generate, "generate_responses", recording("dev"))  # DevRouge imports it per call
    monkeypatch.setattr(harness, "generate_responses", recording("eval"))
    return seen


# ----------------------------------------------------------------------------- templates
def test_dev_rouge_evaluation_and_predictions_use_the_training_template(tmp_path, prompts_seen):
    """data=synthetic trains on template `none`: the dev ROUGE-L prompts, the final evaluation's
    prompts and predictions/*.jsonl are the bare instructions, and results.json says so."""
    cfg = compose_cfg(QUICK, tmp_path)
    assert cfg.data.template == "none"
    results = run(cfg)
    dm_dev = [format_prompt(r, "none") for r in results_rows(tmp_path, "dev", cfg)]
    assert prompts_seen["dev"] and prompts_seen["dev"] == dm_dev[: len(prompts_seen["dev"])]
    test_rows = read_jsonl(tmp_path / "data" / "test.jsonl")[:4]
    expected = [format_prompt(r, "none") for r in test_rows]
    assert prompts_seen["eval"] == expected
    assert [p["prompt"] for p in read_jsonl(tmp_path / "predictions" / "synthetic.jsonl")] == expected
    assert not any("### Instruction" in p for p in prompts_seen["dev"] + prompts_seen["eval"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["eval"]["template"] == "none" and saved["eval"]["template_source"] == "data.template"
    assert saved["templates"] == {
        "train": "none",
        "dev_rouge": "none",
        "eval": "none",
        "eval_source": "data.template",
    }
    assert results["eval"]["protocol_config"]["template"] == "none"

    # an explicit eval.template wins, and is recorded as such
    explicit = compose_cfg(QUICK + ["eval.template=minillm"], tmp_path / "explicit")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    tok = AutoTokenizer.from_pretrained(tmp_path / "student")
    dm = type("DM", (), {"rows": {"test": test_rows}})()
    ev = final_evaluation(explicit, model, tok, dm, tmp_path / "explicit")
    assert ev["template"] == "minillm" and ev["template_source"] == "eval.template"
    preds = read_jsonl(tmp_path / "explicit" / "predictions" / "synthetic.jsonl")
    assert [p["prompt"] for p in preds] == [format_prompt(r, "minillm") for r in test_rows]


def results_rows(run_dir, split, cfg):
    """The rows of a split as the run prepared them (same config, same tokenizer: same filter)."""
    from distillkit.data.datamodule import DistillDataModule
    from distillkit.models.pair import load_tokenizer

    tok = load_tokenizer(cfg.model.student.tokenizer, "student", cfg.cache_dir)
    dm = DistillDataModule(cfg.data, tok, tok, shared_tokenizer=True)
    dm.setup()
    return dm.rows[split]


def test_dev_rouge_template_override_is_used():
    from distillkit.callbacks.dev_eval import DevRouge

    data = compose_cfg(SMALL).data
    assert DevRouge().resolve_template(data) == "none"
    assert DevRouge(template="minillm").resolve_template(data) == "minillm"
    with pytest.raises(ValueError, match="valid: minillm, chat, none"):
        DevRouge(template="alpaca")


# ----------------------------------------------------------------------------- the teacher's cache key
@pytest.mark.parametrize(
    "student_only",
    [
        "data.batch_size=4",
        "data.eval_batch_size=3",
        "data.max_dev_rows=5",
        "data.num_workers=1",
        "trainer.optim.lr=1e-5",
        "trainer.optim.weight_decay=0.3",
        "trainer.optim.schedule=linear",
        "trainer.accumulate_grad_batches=4",
        "trainer.gradient_clip_val=0.1",
        "trainer.max_epochs=9",
        "method=mta",
        "seed=7",
        "model.student.arch_config.n_layer=1",
        "eval=smoke",
    ],
)
def test_the_teacher_key_ignores_what_only_the_student_sees(student_only):
    base = compose_cfg(SMALL)
    other = compose_cfg(SMALL + [student_only])
    assert sft_teacher_key(other) == sft_teacher_key(base)
    # the teacher's own training is the same config too: nothing of the student's trainer leaks in
    assert teacher_sft_config(other).trainer == teacher_sft_config(base).trainer


@pytest.mark.parametrize(
    "teacher_input",
    [
        "model.teacher.arch_config.n_layer=3",
        "model.teacher_sft.lr=1e-4",
        "model.teacher_sft.max_steps=5",
        "model.teacher_sft.batch_size=4",
        "model.teacher_sft.seed=1",
        "data.template=minillm",
        "data.max_train_rows=10",
        "data.max_total_tokens=100",
        "data.max_prompt_tokens=100",
        "data.shuffle_seed=5",
        "data.synthetic.n_train=50",
        "strategy=bf16",
    ],
)
def test_the_teacher_key_changes_with_what_the_teacher_trains_on(teacher_input):
    assert sft_teacher_key(compose_cfg(SMALL + [teacher_input])) != sft_teacher_key(compose_cfg(SMALL))


def test_teacher_sft_config_trains_with_the_sft_settings():
    cfg = compose_cfg(SMALL + ["trainer.optim.weight_decay=0.3", "trainer.accumulate_grad_batches=4"])
    t = teacher_sft_config(cfg)
    sft = cfg.model.teacher_sft
    assert t.stage == "teacher_sft" and t.seed == sft.seed and t.resume == "never"
    assert t.data.batch_size == sft.batch_size and t.trainer.max_steps == sft.max_steps
    assert t.trainer.optim.lr == sft.lr and t.trainer.optim.warmup_steps == sft.warmup_steps
    assert t.trainer.optim.weight_decay == 0.01 and t.trainer.accumulate_grad_batches == 1


# ----------------------------------------------------------------------------- provenance
def test_results_record_the_teacher_eval_files_and_the_code(tmp_path):
    cfg = compose_cfg(QUICK, tmp_path)
    run(cfg)
    prov = json.loads((tmp_path / "results.json").read_text())["provenance"]
    teacher = ensure_sft_teacher(cfg)
    assert prov["teacher"]["source"] == "sft_cache" and prov["teacher"]["path"] == str(teacher)
    assert prov["teacher"]["key"] == sft_teacher_key(cfg)
    files = prov["teacher"]["files"]
    assert "config.json" in files and any(n.endswith(".safetensors") for n in files)
    assert files == {n: _sha(teacher / n) for n in files}
    assert prov["eval_files"] == {"synthetic": _sha(tmp_path / "data" / "test.jsonl")}
    assert isinstance(prov["git_dirty"], bool) and prov["git_commit"]


def test_git_state_flags_a_dirty_tree_and_hashes_its_diff(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    clean = git_state(tmp_path)
    assert clean["git_commit"] and clean["git_dirty"] is False and clean["git_diff_sha256"] is None
    (tmp_path / "a.py").write_text("x = 2\n")
    first = git_state(tmp_path)
    (tmp_path / "a.py").write_text("x = 3\n")
    second = git_state(tmp_path)
    assert first["git_dirty"] and second["git_dirty"] and first["git_commit"] == clean["git_commit"]
    assert first["git_diff_sha256"] and first["git_diff_sha256"] != second["git_diff_sha256"]
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "new.txt").write_text("untracked\n")
    untracked = git_state(tmp_path)
    assert untracked["git_dirty"] and untracked["git_untracked"] == 1 and untracked["git_diff_sha256"] is None
    plain = tmp_path.parent / f"{tmp_path.name}-plain"
    plain.mkdir()
    assert set(git_state(plain).values()) == {None}  # outside a checkout: nothing claimed


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from distillkit.utils.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        with open(tmp_path / "plain.json", "w") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644, oct(mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
