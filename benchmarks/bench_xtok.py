"""Benchmark of the cross-tokenizer methods: step time and peak memory as ratios against ULD.

    python benchmarks/bench_xtok.py [--shape bench|tiny] [--rounds 3] [--steps 3] [--out PATH]

The bench pair: a random-init GPT-2 teacher (8 layers, d=512) with a byte-level BPE and a GPT-2 student
(4 layers, d=256) with a ``▁`` Unigram, both tokenizers trained here on the synthetic corpus (~4k
tokens each; ``--shape tiny`` shrinks everything for a smoke run), on a batch of the 8 longest of the
first 200 real Dolly train rows (``$DISTILLKIT_DATA_ROOT``; up to 256 tokens, about 8 x 256) or, without a
data root, of synthetic rows (short: about 8 x 40). Everything a method aligns is built in data preparation, before timing:
the timed step is ``compute_terms`` + ``weighted_loss`` + ``backward`` + ``AdamW.step``.

Each (method, round) runs in its own child process, so the peak resident memory of one cannot leak into
another's, and the rounds alternate the methods (round r runs every method once, in a rotated order), so
machine drift cannot favour one. A child reports the median of ``--steps`` steps after one warm-up, its
peak RSS over a baseline child that only builds the data and models, and its data-preparation time.
The children share one cache folder that starts empty (``$DISTILLKIT_CACHE`` is set to a fresh temporary
folder unless ``--cache DIR`` names one), so the first round's baseline child is a true first run (it
trains the two tokenizers and builds ULD's alignments) and each method's first child builds its own
alignments (vocabulary maps, token pairs, co-segmentation, span parses); every later child finds them
in the cache: ``prep_first_s`` vs ``prep_cached_s``. SRA is measured with both attention captures: ``sra`` (the row recomputed next to the
SDPA kernel, the default) and ``sra_eager`` (every layer eager, ``model.*.attn_implementation=
distillkit_eager``). Ratios are within one run; never compare absolute times across machines.
Writes ``benchmarks/results/xtok.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import peak_rss_mb, run_json_child  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
EAGER = [
    "model.teacher.attn_implementation=distillkit_eager",
    "model.student.attn_implementation=distillkit_eager",
]
#: name -> overrides; the first is the ratios' base (the cheapest cross-tokenizer step)
METHODS = {
    "uld": ["method=uld"],
    "mined": ["method=mined"],
    "dskdv2_eta": ["method=dskdv2_eta"],
    "dskd_cma": ["method=dskd_cma"],
    "multilevel_ot": ["method=multilevel_ot"],
    "sra": ["method=sra"],
    "sra_eager": ["method=sra", *EAGER],
    "mta_xtok": ["method=mta_xtok"],
}
TARGETS = {"mined": 1.10, "dskdv2_eta": 1.10, "sra": 1.10}
LABELS = {
    "uld": "ULD",
    "mined": "MinED",
    "dskdv2_eta": "DSKDv2-ETA",
    "dskd_cma": "DSKD-CMA",
    "multilevel_ot": "MultiLevelOT",
    "sra": "SRA (row next to SDPA, default)",
    "sra_eager": "SRA (eager attention, every layer)",
    "mta_xtok": "MTA-xtok (on DSKDv2-ETA)",
}
SHAPES = {
    "bench": {"teacher": (8, 512, 8), "student": (4, 256, 4), "vocab": 4096, "rows": 200, "batch": 8},
    "tiny": {"teacher": (2, 64, 4), "student": (2, 32, 2), "vocab": 1024, "rows": 16, "batch": 4},
}


def overrides(shape: str, method: list[str]) -> list[str]:
    s = SHAPES[shape]
    (tl, td, th), (sl, sd, sh) = s["teacher"], s["student"]
    return [
        "model=tiny-xtok",
        f"model.teacher.tokenizer=tiny:bpe:{s['vocab']}",
        f"model.student.tokenizer=tiny:unigram:{s['vocab']}",
        f"model.teacher.layers={tl}",
        f"model.teacher.hidden={td}",
        f"model.teacher.heads={th}",
        f"model.teacher.intermediate={4 * td}",
        f"model.student.layers={sl}",
        f"model.student.hidden={sd}",
        f"model.student.heads={sh}",
        f"model.student.intermediate={4 * sd}",
        "model.teacher_sft.enabled=false",
        "layer_map=uniform",
        "layer_map.num_pairs=2",
        *data_overrides(s),
        f"data.batch_size={s['batch']}",
        "logger=none",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        *method,
    ]


def data_overrides(s: dict) -> list[str]:
    import os

    root = os.environ.get("DISTILLKIT_DATA_ROOT")
    if root and Path(root, "dolly").is_dir():
        return [
            "data=dolly",
            f"data.root={root}",
            f"data.max_train_rows={s['rows']}",
            "data.max_dev_rows=8",
            "data.max_prompt_tokens=128",
            "data.max_total_tokens=256",
        ]
    return [f"data.synthetic.n_train={s['rows']}", "data.synthetic.n_dev=8", "data.synthetic.n_test=4"]


def run_child(name: str, shape: str, steps: int) -> dict:
    """Build the run of ``name`` without fitting, then time its step (``baseline``: build only)."""
    import tempfile

    import lightning as L
    import torch

    from distillkit.data.datamodule import collate
    from distillkit.pipeline import train
    from tests.helpers import compose_cfg

    base = "uld" if name == "baseline" else name
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(overrides(shape, METHODS[base]), Path(tmp))
        fit = L.Trainer.fit
        L.Trainer.fit = lambda self, *a, **k: None
        started = time.perf_counter()
        try:
            out = train(cfg, Path(tmp))
        finally:
            L.Trainer.fit = fit
        prep = time.perf_counter() - started
    module, dm = out["module"], out["datamodule"]
    longest = sorted(dm.examples["train"], key=lambda ex: -len(ex.student.input_ids))
    batch = collate(longest[: SHAPES[shape]["batch"]])
    record = {
        "child": name,
        "prep_s": prep,
        "tokens": batch.num_tokens,
        "shape": list(batch.student.input_ids.shape),
    }
    if name == "baseline":
        record["peak_rss_mb"] = peak_rss_mb()
        return record
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = module.weighted_loss(module.compute_terms(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    record["step_s"] = statistics.median(times)
    record["peak_rss_mb"] = peak_rss_mb()
    return record


def spawn(name: str, args) -> dict:
    import os

    cmd = [sys.executable, __file__, "--child", name, "--shape", args.shape, "--steps", str(args.steps)]
    env = {**os.environ, "DISTILLKIT_CACHE": str(args.cache)} if args.cache else None
    return run_json_child(cmd, {"child": name}, cwd=str(REPO), env=env)


def summarize(rounds: list[list[dict]]) -> dict:
    base_rss = statistics.median(r["peak_rss_mb"] for rnd in rounds for r in rnd if r["child"] == "baseline")
    by_method: dict[str, list[dict]] = {}
    for rnd in rounds:
        for r in rnd:
            if r["child"] != "baseline":
                by_method.setdefault(r["child"], []).append(r)
    uld = by_method.get("uld", [])
    baselines = [r for rnd in rounds for r in rnd if r["child"] == "baseline" and "prep_s" in r]
    out = {
        "baseline_rss_mb": base_rss,
        # data preparation of the ULD run: into an empty cache (tokenizers trained), then cached
        "prep_cold_s": baselines[0]["prep_s"] if baselines else None,
        "prep_warm_s": statistics.median(r["prep_s"] for r in baselines[1:]) if len(baselines) > 1 else None,
        "methods": {},
    }
    for name, recs in by_method.items():
        ok = [r for r in recs if "step_s" in r]
        if not ok:
            out["methods"][name] = {"label": LABELS.get(name, name), "error": recs[0].get("error")}
            continue
        # per-round ratio against ULD of the same round, then median and spread over the rounds
        ratios = [r["step_s"] / u["step_s"] for r, u in zip(recs, uld) if "step_s" in r and "step_s" in u]
        mem = [
            (r["peak_rss_mb"] - base_rss) / max(u["peak_rss_mb"] - base_rss, 1.0)
            for r, u in zip(recs, uld)
            if "step_s" in r and "step_s" in u
        ]
        out["methods"][name] = {
            "label": LABELS.get(name, name),
            "step_s": statistics.median(r["step_s"] for r in ok),
            "step_ratio_vs_uld": statistics.median(ratios) if ratios else None,
            "step_ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "memory_ratio_vs_uld": statistics.median(mem) if mem else None,
            "tokens_per_s": statistics.median(r["tokens"] / r["step_s"] for r in ok),
            "prep_first_s": recs[0]["prep_s"],
            "prep_cached_s": statistics.median(r["prep_s"] for r in recs[1:]) if len(recs) > 1 else None,
            "target": TARGETS.get(name),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "xtok.json")
    parser.add_argument("--cache", type=Path, help="the children's cache folder (default: a fresh empty one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.shape, args.steps)))
        return
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods {unknown}; valid: {', '.join(METHODS)}")
    names = ["uld", *[m for m in args.methods if m != "uld"]]
    import tempfile

    fresh = None
    if args.cache is None:
        fresh = tempfile.TemporaryDirectory(prefix="dk-bench-cache-")
        args.cache = Path(fresh.name)
    rounds = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        rounds.append([spawn("baseline", args)] + [spawn(n, args) for n in order])
    if fresh is not None:
        fresh.cleanup()
    summary = {
        "shape": args.shape,
        "rounds": args.rounds,
        "steps": args.steps,
        "sizes": SHAPES[args.shape],
        "base": "uld",
        **summarize(rounds),
        "raw": rounds,
    }
    from distillkit.utils.io import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, summary)
    print(f"cross-tokenizer step benchmark ({args.shape}, {args.rounds} alternating rounds; base: uld)")
    print(
        f"{'method':<14} {'step':>9} {'x uld':>7} {'range':>13} {'mem x uld':>10} {'tok/s':>8} {'prep 1st/cached':>17} target"
    )
    for name, m in summary["methods"].items():
        if "error" in m:
            print(f"{name:<14} error: {m['error']}")
            continue
        rng = m["step_ratio_range"] or [float("nan")] * 2
        cached = m["prep_cached_s"] if m["prep_cached_s"] is not None else float("nan")
        print(
            f"{name:<14} {m['step_s'] * 1e3:7.0f}ms {m['step_ratio_vs_uld'] or float('nan'):6.2f}x "
            f"{rng[0]:5.2f}-{rng[1]:5.2f}x {m['memory_ratio_vs_uld'] or float('nan'):9.2f}x "
            f"{m['tokens_per_s']:8.0f} {m['prep_first_s']:7.1f}s/{cached:6.1f}s "
            + (f"<= {m['target']:.2f}x" if m["target"] else "")
        )


if __name__ == "__main__":
    main()
