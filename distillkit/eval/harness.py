"""Evaluate a model under a protocol: generate for every set and seed, score with ROUGE-L.

The returned dict is what goes under ``results["eval"]`` (schema in ``distillkit/tables/aggregate.py``)::

    {"protocol": "dskd", "protocol_config": {...}, "template": "minillm", "template_source": "data.template",
     "sets": {"dolly": {"path": "dolly/valid.jsonl", "sha256": "...", "missing": false, "n_prompts": 500,
                        "seeds": {"10": 24.1, ...}, "n_seeds": 5, "mean": 24.0, "std": 0.3,
                        "std_over": "generation_seeds"},
              "uinst": {"path": "uinst/11_/valid.jsonl", "missing": true, "reason": "file not found"}},
     "avg": 18.2, "missing_sets": ["uinst"]}

A missing set is never dropped silently: it is listed in ``missing_sets`` and left out of ``avg``.
``std`` is the sample standard deviation (n-1) over generation seeds; with a single seed it is 0.0
(kept a number so that consumers can format it) and ``n_seeds`` says that there is no spread.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from distillkit.data.template import references as row_references
from distillkit.eval.generate import generate_responses
from distillkit.eval.protocol import EvalProtocol, load_protocol, resolve_template, row_prompt
from distillkit.eval.rouge import rouge_l
from distillkit.utils.io import atomic_write_text, read_jsonl, sha256_file


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n-1); the std of a single value is reported as 0.0."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def load_eval_rows(path: Path, max_prompts: int | None = None) -> list[dict[str, Any]]:
    """The rows of one evaluation file (the first ``max_prompts``), each checked to have a reference."""
    rows = read_jsonl(path)
    if max_prompts is not None:
        rows = rows[:max_prompts]
    bad = [i for i, row in enumerate(rows) if not row_references(row)]
    if bad:
        raise ValueError(f"{path}: rows {bad[:10]} have no reference 'output'; ROUGE-L needs one.")
    return rows


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    protocol: EvalProtocol | str,
    data_root: str | Path,
    out_dir: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    log: Callable[[str], Any] | None = print,
    sets: Mapping[str, str] | None = None,
    template: str | None = None,
    template_source: str = "caller",
) -> dict[str, Any]:
    """Generate and score every set of ``protocol`` (a protocol or the name of a ``conf/eval`` YAML).

    ``sets`` replaces the protocol's sets (name -> path relative to ``data_root``, or absolute).
    Prompts use the protocol's ``template`` when it names one, else ``template`` (a training run passes
    its ``data.template``, ``template_source`` says so), else MiniLLM's; the result records which
    (``template``, ``template_source``). Each file read is hashed (``sets.<name>.sha256``).
    With ``out_dir``, predictions go to ``out_dir/predictions/<set>.jsonl`` (one line per seed and
    prompt: index, seed, prompt, references, generation, score).
    """
    if isinstance(protocol, str):
        protocol = load_protocol(protocol)
    if protocol is None:
        raise ValueError("No evaluation protocol (eval=none); there is nothing to evaluate.")
    if sets is not None:
        caps = {k: v for k, v in protocol.set_max_prompts.items() if k in sets}  # caps of the sets kept
        protocol = protocol.replace(sets=dict(sets), set_max_prompts=caps)
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"Evaluation data root {str(data_root)!r} is not a folder; set data_root / $DISTILLKIT_DATA_ROOT."
        )
    say = log or (lambda _msg: None)
    used_template, template_source = resolve_template(protocol, template, template_source)
    protocol = protocol.replace(template=used_template)
    say(f"[eval {protocol.name}] prompts use template {used_template!r} ({template_source})")

    # Load every set first, so a malformed file fails before any generation.
    loaded: dict[str, list[dict[str, Any]]] = {}
    hashes: dict[str, str] = {}
    set_results: dict[str, dict[str, Any]] = {}
    for name, rel in protocol.sets.items():
        path = data_root / rel
        if not path.is_file():
            set_results[name] = {"path": rel, "missing": True, "reason": "file not found"}
            say(
                f"[eval {protocol.name}] {name}: MISSING ({path} not found); reported as missing, left out of avg"
            )
            continue
        rows = load_eval_rows(path, protocol.prompt_cap(name))
        if not rows:
            set_results[name] = {"path": rel, "missing": True, "reason": "file is empty"}
            say(f"[eval {protocol.name}] {name}: MISSING ({path} is empty)")
            continue
        loaded[name] = rows
        hashes[name] = sha256_file(path)

    for name, rows in loaded.items():
        prompts = [row_prompt(row, protocol.template, tokenizer) for row in rows]
        refs = [protocol.row_references(row_references(row)) for row in rows]
        seed_scores: dict[str, float] = {}
        prediction_lines: list[str] = []
        for seed in protocol.seeds:
            start = time.perf_counter()
            generations = generate_responses(
                model, tokenizer, prompts, seed=seed, device=device, **protocol.generation_kwargs()
            )
            scores = [rouge_l(g, r) for g, r in zip(generations, refs)]
            seed_scores[str(seed)] = statistics.fmean(scores)
            say(
                f"[eval {protocol.name}] {name} seed {seed}: ROUGE-L {seed_scores[str(seed)]:.2f} "
                f"({len(prompts)} prompts, {time.perf_counter() - start:.1f}s)"
            )
            prediction_lines.extend(
                json.dumps(
                    {"index": i, "seed": seed, "prompt": p, "references": r, "generation": g, "score": s},
                    ensure_ascii=False,
                )
                for i, (p, r, g, s) in enumerate(zip(prompts, refs, generations, scores))
            )
        mean, std = _mean_std(list(seed_scores.values()))
        set_results[name] = {
            "path": protocol.sets[name],
            "sha256": hashes[name],
            "missing": False,
            "n_prompts": len(prompts),
            "prompt_cap": protocol.prompt_cap(name),
            "seeds": seed_scores,
            "n_seeds": len(seed_scores),
            "mean": mean,
            "std": std,
            "std_over": "generation_seeds",
        }
        if out_dir is not None:
            atomic_write_text(
                Path(out_dir) / "predictions" / f"{name}.jsonl", "\n".join(prediction_lines) + "\n"
            )

    present = [n for n in protocol.sets if not set_results[n]["missing"]]
    missing = [n for n in protocol.sets if set_results[n]["missing"]]
    avg = statistics.fmean(set_results[n]["mean"] for n in present) if present else None
    if avg is not None:
        say(
            f"[eval {protocol.name}] avg over {len(present)} sets: {avg:.2f}"
            + (f" (missing: {missing})" if missing else "")
        )
    return {
        "protocol": protocol.name,
        "protocol_config": protocol.to_dict(),
        "template": used_template,
        "template_source": template_source,
        "sets": {n: set_results[n] for n in protocol.sets},
        "avg": avg,
        "missing_sets": missing,
    }
