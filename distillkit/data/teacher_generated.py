"""SeqKD's data: the teacher's own responses to the training prompts, generated once and cached.

``teacher_generated_rows`` returns a row transform for :class:`~distillkit.data.datamodule.DistillDataModule`:
on the train split, each row's ``output`` becomes the teacher's sampled response to the row's prompt
(MiniLLM's ``generate_data_seqkd.sh``: top_k 0, top_p 1, T 1, prompt <= 256, <= 512 in total, seed 10).
The generations are cached under ``<cache_dir>/seqkd/<key>/`` by the teacher (its weights' path, its
config and a checksum of two of its tensors), the prompts and the sampling settings, in shards of
``shard_size`` prompts written atomically, so an interrupted generation resumes at its first missing
shard. The student re-tokenizes the generated *text* with its own tokenizer: no alignment, so SeqKD works
for same- and cross-tokenizer pairs alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from distillkit.data.template import format_prompt
from distillkit.utils.io import atomic_write_text, cache_dir, locked, stable_hash

log = logging.getLogger(__name__)


def teacher_identity(model: Any) -> str:
    """A cheap fingerprint of the teacher: weights' path, config, and the sums of its first and last tensors."""
    params = list(model.parameters())
    sums = [float(params[i].detach().float().sum()) for i in (0, -1)] if params else []
    config = model.config.to_dict() if hasattr(model, "config") else {}
    return stable_hash(getattr(model.config, "name_or_path", ""), config, sums)


def teacher_generated_rows(
    teacher: Any,
    *,
    sampling: dict[str, Any],
    cache_root: str | None = None,
    shard_size: int = 64,
    generate: Callable[..., list[str]] | None = None,
) -> Callable[[str, list[dict], Any], list[dict]]:
    """A row transform replacing the train rows' outputs by the teacher's generations (see the module)."""
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1")

    def transform(split: str, rows: list[dict], data_cfg: Any) -> list[dict]:
        if split != "train" or not rows:
            return rows
        from distillkit.eval.generate import generate_responses

        gen = generate or generate_responses
        prompts = [format_prompt(r, data_cfg.template, tokenizer=teacher.tokenizer) for r in rows]
        key = stable_hash(teacher_identity(teacher.model), sampling, prompts)
        root = cache_dir(cache_root) / "seqkd" / key
        outputs: list[str] = []
        with locked(root):
            for start in range(0, len(prompts), shard_size):
                shard = root / f"shard-{start // shard_size:05d}.jsonl"
                chunk = prompts[start : start + shard_size]
                if shard.is_file():
                    got = [json.loads(line)["output"] for line in shard.read_text().splitlines()]
                else:
                    log.info(
                        "seqkd: the teacher generates prompts %d-%d of %d",
                        start,
                        start + len(chunk),
                        len(prompts),
                    )
                    got = gen(teacher.model, teacher.tokenizer, chunk, **sampling)
                    atomic_write_text(shard, "".join(json.dumps({"output": o}) + "\n" for o in got))
                if len(got) != len(chunk):
                    raise RuntimeError(
                        f"{shard}: {len(got)} generations for {len(chunk)} prompts; delete it to redo"
                    )
                outputs.extend(got)
        return [{**row, "output": out} for row, out in zip(rows, outputs)]

    return transform
