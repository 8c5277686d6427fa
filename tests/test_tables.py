"""Table specs, aggregation into Markdown/LaTeX, paired bootstrap, plots, and the reproduce driver."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from distillkit.tables import aggregate as agg
from distillkit.tables import reproduce
from distillkit.tables.spec import SCALES, SPECS_DIR, load_specs, load_vocab, parse_spec, plan_runs, slugify

SETS = ["dolly", "vicuna", "uinst"]


def make_spec(rows, seeds=(1, 2, 3), compare=None, plot=None):
    raw = {
        "name": "t",
        "title": "Test table",
        "caption": "A caption with 50% & an_underscore",
        "columns": [*SETS, "avg"],
        "seeds": list(seeds),
        "scales": {"smoke": {"overrides": ["model=tiny"]}},
        "rows": [{"label": label, "overrides": [f"method={label.lower()}"]} for label in rows],
    }
    if compare:
        raw["compare"] = compare
    if plot:
        raw["plot"] = plot
    return parse_spec(raw, {})


def write_run(root, spec, row, seed, set_scores, missing=()):
    """A results.json in the run folder; set_scores: set -> {gen seed: score}."""
    plan = next(p for p in plan_runs(spec, "smoke", root) if p.row == row and p.seed == seed)
    sets = {}
    for name in SETS:
        if name in missing:
            sets[name] = {"missing": True, "path": f"{name}/valid.jsonl"}
        else:
            scores = set_scores[name]
            vals = list(scores.values())
            sets[name] = {
                "seeds": {str(k): v for k, v in scores.items()},
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,  # as the harness writes it
                "n_prompts": 10,
                "missing": False,
            }
    present = [n for n in SETS if n not in missing]
    results = {
        "experiment": "t",
        "seed": seed,
        "eval": {
            "protocol": "dskd",
            "sets": sets,
            "avg": float(np.mean([sets[n]["mean"] for n in present])),
            "missing_sets": list(missing),
        },
    }
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    plan.results_path.write_text(json.dumps(results))
    return plan


# ------------------------------------------------------------------------------------------ specs


def test_every_spec_loads_and_uses_only_named_overrides():
    specs = load_specs()
    names = {s.name for s in specs}
    assert {
        "same_tokenizer_main",
        "cross_tokenizer_main",
        "mta_ablation",
        "mta_layers",
        "mta_wspan",
        "mta_spans",
        "sra_ablation",
    } <= names
    vocab = load_vocab()
    for path in SPECS_DIR.glob("*.yaml"):
        if path.name.startswith("_"):
            continue
        raw = yaml.safe_load(path.read_text())
        for row in raw["rows"]:  # override keys live in _vocab.yaml only
            assert row["overrides"] and all(o.startswith("@") and o[1:] in vocab for o in row["overrides"]), (
                row
            )
    briefed = {"same_tokenizer_main", "cross_tokenizer_main", "mta_ablation", "mta_layers", "mta_wspan"}
    briefed |= {"mta_spans", "sra_ablation"}
    for spec in specs:
        assert spec.scales and set(spec.scales) <= set(SCALES)
        if spec.name in briefed:
            assert set(spec.scales) == {"paper", "smoke"}
        assert spec.columns[-1] == "avg"
        assert all(row.overrides for row in spec.rows)


def test_main_tables_have_the_briefed_rows():
    specs = {s.name: s for s in load_specs()}
    same = specs["same_tokenizer_main"]
    divergences = {
        o.split("=")[1] for r in same.rows for o in r.overrides if o.startswith("method.divergence=")
    }
    assert divergences == {"fkl", "rkl", "js", "tvd", "skl", "srkl", "akl"}
    assert "model=gpt2-xl-to-gpt2" in same.scale("paper").overrides
    cross = specs["cross_tokenizer_main"]
    assert [r.label for r in cross.rows] == [
        "SFT",
        "SeqKD",
        "ULD",
        "MinED",
        "DSKD-CMA",
        "DSKDv2-ETA",
        "MultiLevelOT",
        "SRA",
        "MTA-xtok",
    ]
    assert "experiment=xtok_qwen_gpt2" in cross.scale("paper").overrides  # DSKD's setting, qwen-to-gpt2
    layers = specs["mta_layers"]
    assert [o for r in layers.rows for o in r.overrides if o.startswith("layer_map.")] == [
        f"layer_map.num_pairs={k}" for k in range(1, 6)
    ]


def test_vocab_expansion_and_errors():
    vocab = {"a": ["x=1", "@b"], "b": ["y=2"], "loop": ["@loop"]}
    raw = {
        "name": "v",
        "columns": ["dolly", "avg"],
        "seeds": [1],
        "scales": {"smoke": {"overrides": ["@b"]}},
        "rows": [{"label": "R", "overrides": ["@a", "z=3"]}],
    }
    spec = parse_spec(raw, vocab)
    assert spec.rows[0].overrides == ["x=1", "y=2", "z=3"]
    assert plan_runs(spec, "smoke", Path("/r"))[0].overrides == ["x=1", "y=2", "z=3", "y=2"]
    with pytest.raises(ValueError, match="unknown override name '@c'"):
        parse_spec({**raw, "rows": [{"label": "R", "overrides": ["@c"]}]}, vocab)
    with pytest.raises(ValueError, match="refers to itself"):
        parse_spec({**raw, "rows": [{"label": "R", "overrides": ["@loop"]}]}, vocab)
    with pytest.raises(ValueError, match="same folder"):
        parse_spec({**raw, "rows": [{"label": "K D"}, {"label": "k-d"}]}, vocab)
    with pytest.raises(ValueError, match="unknown scale 'huge'; valid: paper, smoke"):
        parse_spec({**raw, "scales": {"huge": {}}}, vocab)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_spec({**raw, "colums": []}, vocab)


def test_run_folders_are_deterministic(tmp_path):
    spec = make_spec(["SFT", "KD (FKL)"], seeds=(4, 5))
    dirs = [p.run_dir for p in plan_runs(spec, "smoke", tmp_path)]
    assert dirs == [
        tmp_path / "smoke" / "t" / "sft" / "seed4",
        tmp_path / "smoke" / "t" / "sft" / "seed5",
        tmp_path / "smoke" / "t" / "kd-fkl" / "seed4",
        tmp_path / "smoke" / "t" / "kd-fkl" / "seed5",
    ]
    assert dirs == [p.run_dir for p in plan_runs(spec, "smoke", tmp_path)]
    assert slugify("w_span 0.5") == "w-span-0.5"


# ------------------------------------------------------------------------------------ aggregation


@pytest.fixture
def filled(tmp_path):
    """Rows: Full (3/3 seeds), Partial (2/3, uinst missing), Failed (FAILED record), Absent, Single."""
    spec = make_spec(["Full", "Partial", "Failed", "Absent"])
    rng = np.random.default_rng(0)
    truth = {}
    for row, seeds, missing in (("Full", (1, 2, 3), ()), ("Partial", (1, 3), ("uinst",))):
        for seed in seeds:
            scores = {n: {g: float(rng.uniform(10, 30)) for g in (10, 20)} for n in SETS}
            write_run(tmp_path, spec, row, seed, scores, missing)
            truth[(row, seed)] = scores
    failed = next(p for p in plan_runs(spec, "smoke", tmp_path) if p.row == "Failed")
    failed.run_dir.mkdir(parents=True)
    failed.failed_path.write_text("exit: 3\n")
    return spec, tmp_path, truth


def test_cells_are_mean_and_sample_std_over_training_seeds(filled):
    spec, root, truth = filled
    result = agg.aggregate_table(spec, "smoke", root)

    per_run = [np.mean(list(truth[("Full", s)]["dolly"].values())) for s in (1, 2, 3)]
    cell = result.cell("Full", "dolly")
    assert cell.value == pytest.approx(np.mean(per_run))
    assert cell.std == pytest.approx(np.std(per_run, ddof=1))
    assert cell.n == 3 and cell.notes == [] and cell.gen_std is None

    avg_runs = [np.mean([np.mean(list(truth[("Full", s)][n].values())) for n in SETS]) for s in (1, 2, 3)]
    assert result.cell("Full", "avg").value == pytest.approx(np.mean(avg_runs))
    assert result.cell("Full", "avg").std == pytest.approx(np.std(avg_runs, ddof=1))

    partial = result.cell("Partial", "vicuna")
    assert partial.n == 2 and partial.notes == ["partial"]
    assert partial.value == pytest.approx(
        np.mean([np.mean(list(truth[("Partial", s)]["vicuna"].values())) for s in (1, 3)])
    )
    assert result.cell("Partial", "uinst").value is None
    assert result.cell("Partial", "uinst").notes == ["set_missing"]
    assert result.cell("Partial", "avg").value is None  # avg over the table's sets is undefined
    assert result.cell("Partial", "avg").notes == ["avg_incomplete"]
    assert result.cell("Failed", "dolly").notes == ["run_failed"]
    assert result.cell("Absent", "avg").notes == ["run_missing"]
    assert result.protocols == ["dskd"]


def test_single_run_reports_generation_seed_spread(tmp_path):
    spec = make_spec(["One"], seeds=(7,))
    scores = {
        "dolly": {10: 20.0, 20: 22.0, 30: 27.0},
        "vicuna": {10: 5.0, 20: 9.0, 30: 10.0},
        "uinst": {10: 1.0, 20: 2.0, 30: 6.0},
    }
    write_run(tmp_path, spec, "One", 7, scores)
    result = agg.aggregate_table(spec, "smoke", tmp_path)
    cell = result.cell("One", "dolly")
    assert cell.value == pytest.approx(23.0) and cell.std is None
    assert cell.gen_std == pytest.approx(np.std([20.0, 22.0, 27.0], ddof=1))
    per_seed_avg = [np.mean([scores[n][g] for n in SETS]) for g in (10, 20, 30)]
    assert result.cell("One", "avg").gen_std == pytest.approx(np.std(per_seed_avg, ddof=1))
    assert agg.format_cell(cell) == f"23.00 (± {np.std([20.0, 22.0, 27.0], ddof=1):.2f})"


def test_one_generation_seed_shows_no_spread(tmp_path):
    spec = make_spec(["One"], seeds=(7,))
    write_run(tmp_path, spec, "One", 7, {n: {10: 12.5} for n in SETS})
    cell = agg.aggregate_table(spec, "smoke", tmp_path).cell("One", "dolly")
    assert cell.value == 12.5 and cell.gen_std is None and cell.std is None
    assert agg.format_cell(cell) == "12.50"


def test_markdown_and_latex_mark_missing_cells(filled):
    spec, root, truth = filled
    result = agg.aggregate_table(spec, "smoke", root)
    md = agg.to_markdown(result)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    full = result.cell("Full", "dolly")
    assert f"{full.value:.2f} ± {full.std:.2f}" in lines["Full"]
    letters = agg._footnote_letters(result)
    assert f"| —[{letters['run_failed']}] |" in lines["Failed"]
    assert f"—[{letters['set_missing']}]" in lines["Partial"]
    assert f"[{letters['run_missing']}] run not found" in md
    assert "set not available" in md and "Absent" in md.split("run not found")[1].splitlines()[0]
    # a missing cell carries no number
    for label in ("Failed", "Absent"):
        assert not any(ch.isdigit() for ch in lines[label].split("|", 2)[2])

    tex = agg.to_latex(result)
    for piece in (
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\begin{tabular}{lrrrr}",
        r"--\textsuperscript{",
    ):
        assert piece in tex
    assert r"50\% \& an\_underscore" in tex
    assert f"{full.value:.2f} $\\pm$ {full.std:.2f}" in tex

    paths = agg.write_table(result, root)
    assert paths["md"] == root / "smoke" / "tables" / "t.md"
    assert paths["md"].read_text() == md and paths["tex"].read_text() == tex
    assert json.loads(paths["json"].read_text())["cells"]["Failed|dolly"]["value"] is None


def test_best_value_is_bold(tmp_path):
    spec = make_spec(["Low", "High"], seeds=(1,))
    for row, base in (("Low", 10.0), ("High", 20.0)):
        write_run(tmp_path, spec, row, 1, {n: {10: base, 20: base + 2} for n in SETS})
    md = agg.to_markdown(agg.aggregate_table(spec, "smoke", tmp_path))
    high = next(line for line in md.splitlines() if line.startswith("| High"))
    low = next(line for line in md.splitlines() if line.startswith("| Low"))
    assert "**21.00" in high and "**" not in low


# -------------------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_small_p_for_a_clearly_better_row():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 50, size=200)
    a = b + rng.uniform(1, 5, size=200)  # better on every prompt
    assert agg.paired_bootstrap(a, b, n=1000, seed=0) < 0.01
    noisy = b + rng.normal(3, 10, size=200)  # better on average, noisy
    assert agg.paired_bootstrap(noisy, b, n=1000, seed=0) < 0.05


def test_paired_bootstrap_large_p_for_identical_rows():
    b = np.random.default_rng(2).uniform(0, 50, size=100)
    assert agg.paired_bootstrap(b, b.copy(), n=500, seed=0) == 1.0


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=2, max_size=30), st.integers(0, 1000)
)
def test_paired_bootstrap_is_antisymmetric(pairs, seed):
    a, b = np.array(pairs).T
    p_ab = agg.paired_bootstrap(a, b, n=200, seed=seed)
    p_ba = agg.paired_bootstrap(b, a, n=200, seed=seed)
    # the same resamples: mean(a-b) <= 0 or mean(b-a) <= 0 always holds, both only on exact ties
    assert p_ab + p_ba >= 1.0 - 1e-12
    assert 0.0 <= p_ab <= 1.0


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        agg.paired_bootstrap([1, 2], [1])
    with pytest.raises(ValueError, match="at least one"):
        agg.paired_bootstrap([], [])


def _write_predictions(run_dir, set_name, scores_by_seed, prompts):
    lines = [
        json.dumps(
            {
                "index": i,
                "seed": seed,
                "prompt": prompts[i],
                "references": ["r"],
                "generation": "g",
                "score": s,
            }
        )
        for seed, scores in scores_by_seed.items()
        for i, s in enumerate(scores)
    ]
    path = Path(run_dir) / "predictions" / f"{set_name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_compare_rows_uses_per_prompt_scores(tmp_path):
    spec = make_spec(["Good", "Base"], seeds=(1,), compare=[["Good", "Base"]])
    rng = np.random.default_rng(3)
    prompts = [f"prompt {i}" for i in range(80)]
    base = rng.uniform(0, 40, size=80)
    for row, shift in (("Good", 6.0), ("Base", 0.0)):
        plan = write_run(tmp_path, spec, row, 1, {n: {10: 20.0 + shift, 20: 21.0 + shift} for n in SETS})
        _write_predictions(plan.run_dir, "dolly", {10: base + shift, 20: base + shift + 0.5}, prompts)
    res = agg.compare_rows(spec, "smoke", "Good", "Base", tmp_path, n=500, seed=0)
    assert res["sets"]["dolly"]["p_value"] < 0.01
    assert res["sets"]["dolly"]["mean_a"] == pytest.approx(np.mean(base + 6.25))
    assert res["sets"]["vicuna"] == {"missing": True}
    md = agg.to_markdown(agg.aggregate_table(spec, "smoke", tmp_path))
    assert "Paired bootstrap (1000 resamples), Good vs Base: dolly p=0.000" in md

    other = next(p for p in plan_runs(spec, "smoke", tmp_path) if p.row == "Base")
    _write_predictions(other.run_dir, "dolly", {10: base}, [p + "!" for p in prompts])
    with pytest.raises(ValueError, match="different prompts"):
        agg.compare_rows(spec, "smoke", "Good", "Base", tmp_path)
    # inside a table the failed comparison becomes a note; the table is still written
    md = agg.to_markdown(agg.aggregate_table(spec, "smoke", tmp_path))
    assert "Good vs Base not possible" in md and "different prompts" in md


# ------------------------------------------------------------------------------------------- plots


def test_plot_writes_a_png_with_missing_rows(filled):
    from distillkit.tables.plots import plot_table

    spec, root, _ = filled
    result = agg.aggregate_table(spec, "smoke", root)
    path = plot_table(result, root / "plot.png", columns=["dolly", "avg"])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="Cannot plot"):
        plot_table(result, root / "x.png", columns=["nope"])


# --------------------------------------------------------------------------------------- reproduce


def write_specs(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "_vocab.yaml").write_text("tiny: [model=tiny]\n")
    for name, labels in (("alpha", ["SFT", "bad KD"]), ("beta", ["MTA"])):
        spec = {
            "name": name,
            "columns": ["dolly", "avg"],
            "seeds": [1, 2],
            "scales": {"smoke": {"overrides": ["@tiny"]}, "paper": {"overrides": ["model=big"]}},
            "rows": [{"label": label, "overrides": [f"method={slugify(label)}"]} for label in labels],
            "plot": ["avg"],
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))


FAKE_RUN = """
import json, sys, pathlib
args = dict(a.split('=', 1) for a in sys.argv[1:])
pathlib.Path(args['hydra.run.dir'], 'calls').open('a').write('x')
if 'bad' in args['experiment_name']:
    print('Traceback: the entry point does not know this method'); sys.exit(3)
sets = {'dolly': {'seeds': {'10': 20.0}, 'mean': 20.0 + int(args['seed']), 'std': None, 'missing': False}}
out = {'eval': {'protocol': 'smoke', 'sets': sets, 'avg': 20.0, 'missing_sets': []}}
pathlib.Path(args['hydra.run.dir'], 'results.json').write_text(json.dumps(out))
"""


def test_dry_run_lists_exactly_the_runs_without_results(tmp_path, capsys):
    specs_dir, root = tmp_path / "specs", tmp_path / "results"
    write_specs(specs_dir)
    specs = load_specs(specs_dir)
    plans = [p for s in specs for p in plan_runs(s, "smoke", root)]
    assert len(plans) == 6
    done = {plans[0].run_dir, plans[3].run_dir}
    for plan in plans:
        plan.run_dir.mkdir(parents=True)
        if plan.run_dir in done:
            plan.results_path.write_text("{}")
    plans[1].failed_path.write_text("exit: 1")  # failed before: still listed (no results.json)
    rc = reproduce.main(
        ["--scale", "smoke", "--dry-run", "--specs-dir", str(specs_dir), "--results-root", str(root)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    listed = {
        line.split("hydra.run.dir=")[1].split()[0] for line in out.splitlines() if "hydra.run.dir=" in line
    }
    assert listed == {str(p.run_dir) for p in plans if p.run_dir not in done}
    assert "4 without results.json" in out and "(failed before)" in out
    assert not any((p.run_dir / "run.log").exists() for p in plans)  # nothing ran
    assert "method=sft model=tiny seed=2" in out and "experiment_name=alpha/sft" in out


def test_every_failing_run_is_recorded(tmp_path, monkeypatch):
    specs_dir, root = tmp_path / "specs", tmp_path / "results"
    write_specs(specs_dir)
    monkeypatch.setattr(reproduce, "RUN_COMMAND", [sys.executable, "-c", "import sys; sys.exit(3)"])
    reproduce.main(
        ["--scale", "smoke", "--tables", "alpha", "--specs-dir", str(specs_dir), "--results-root", str(root)]
    )
    plans = plan_runs(load_specs(specs_dir, ["alpha"])[0], "smoke", root)
    for plan in plans:  # every run was tried and recorded, none stopped the others
        assert plan.failed_path.read_text().startswith("exit: 3\n")
        assert "command: " in plan.failed_path.read_text()
    md = (root / "smoke" / "tables" / "alpha.md").read_text()
    assert "run failed" in md


def test_failed_run_recorded_and_others_still_run(tmp_path, monkeypatch):
    specs_dir, root = tmp_path / "specs", tmp_path / "results"
    write_specs(specs_dir)
    monkeypatch.setattr(reproduce, "RUN_COMMAND", [sys.executable, "-c", FAKE_RUN])
    args = ["--scale", "smoke", "--specs-dir", str(specs_dir), "--results-root", str(root)]
    reproduce.main(args)
    plans = {(p.table, p.row, p.seed): p for s in load_specs(specs_dir) for p in plan_runs(s, "smoke", root)}
    for (_table, row, _seed), plan in plans.items():
        if row == "bad KD":
            failed = plan.failed_path.read_text()
            assert failed.startswith("exit: 3\n") and "does not know this method" in failed
            assert not plan.results_path.exists()
        else:
            assert plan.results_path.is_file() and not plan.failed_path.exists()
    tables = root / "smoke" / "tables"
    for name in ("alpha", "beta"):
        assert (tables / f"{name}.md").is_file() and (tables / f"{name}.tex").is_file()
        assert (tables / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    alpha = agg.aggregate_table(load_specs(specs_dir, ["alpha"])[0], "smoke", root)
    assert alpha.cell("SFT", "dolly").value == pytest.approx(np.mean([21.0, 22.0]))
    assert alpha.cell("bad KD", "dolly").notes == ["run_failed"]

    # resume: done runs are skipped, failed runs are retried
    reproduce.main(args)
    for (_table, row, _seed), plan in plans.items():
        assert (plan.run_dir / "calls").read_text() == ("xx" if row == "bad KD" else "x")


CRASH_AFTER_RESULTS = """
import json, sys, pathlib
args = dict(a.split('=', 1) for a in sys.argv[1:])
sets = {'dolly': {'seeds': {'10': 20.0}, 'mean': 20.0, 'std': 0.0, 'missing': False}}
out = {'eval': {'protocol': 'smoke', 'sets': sets, 'avg': 20.0, 'missing_sets': []}}
pathlib.Path(args['hydra.run.dir'], 'results.json').write_text(json.dumps(out))
sys.exit(1)  # e.g. a crash while printing a summary, after the results were written
"""


def test_a_run_that_wrote_its_results_counts_as_done(tmp_path, monkeypatch):
    specs_dir, root = tmp_path / "specs", tmp_path / "results"
    write_specs(specs_dir)
    monkeypatch.setattr(reproduce, "RUN_COMMAND", [sys.executable, "-c", CRASH_AFTER_RESULTS])
    reproduce.main(
        ["--scale", "smoke", "--tables", "beta", "--specs-dir", str(specs_dir), "--results-root", str(root)]
    )
    for plan in plan_runs(load_specs(specs_dir, ["beta"])[0], "smoke", root):
        assert plan.status() == "done" and not plan.failed_path.exists()


def test_unknown_table_name_lists_the_valid_ones(tmp_path):
    specs_dir = tmp_path / "specs"
    write_specs(specs_dir)
    with pytest.raises(ValueError, match="valid: alpha, beta"):
        reproduce.main(["--scale", "smoke", "--tables", "gamma", "--dry-run", "--specs-dir", str(specs_dir)])


PREEMPTED_RUN = """
import pathlib, sys
args = dict(a.split('=', 1) for a in sys.argv[1:])
run = pathlib.Path(args['hydra.run.dir'])
(run / 'PREEMPTED').write_text('signal: SIGTERM\\n')  # what distillkit.run writes before exit 75
sys.exit(75)
"""


def test_a_preempted_run_stops_the_reproduction_with_exit_75_and_is_not_failed(tmp_path, monkeypatch, capsys):
    specs_dir, root = tmp_path / "specs", tmp_path / "results"
    write_specs(specs_dir)
    monkeypatch.setattr(reproduce, "RUN_COMMAND", [sys.executable, "-c", PREEMPTED_RUN])
    args = [
        "--scale",
        "smoke",
        "--tables",
        "alpha",
        "--specs-dir",
        str(specs_dir),
        "--results-root",
        str(root),
    ]
    assert reproduce.main(args) == 75  # a requeue (SLURM --requeue) runs reproduce again, which resumes
    plans = plan_runs(load_specs(specs_dir, ["alpha"])[0], "smoke", root)
    tried = [p for p in plans if (p.run_dir / "run.log").exists()]
    assert len(tried) == 1 and tried[0].status() == "preempted" and not tried[0].failed_path.exists()
    assert "run reproduce again to resume it" in capsys.readouterr().out
    assert reproduce.main(args[:-4] + ["--dry-run"] + args[-4:]) == 0
    assert "(preempted: resumes)" in capsys.readouterr().out
