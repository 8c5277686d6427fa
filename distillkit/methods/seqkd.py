"""SeqKD (Kim & Rush; MiniLLM's recipe, ctkd.md §3.7): CE on the teacher's own responses, a base objective.

The teacher samples one response per training prompt once, in data preparation (top_k 0, top_p 1, T 1,
prompt <= 256, <= 512 in total, seed 10; cached and resumable: :mod:`distillkit.data.teacher_generated`),
and the student trains with plain cross-entropy on them with its own tokenizer, so it works across
tokenizers with no alignment. No teacher forward in the step. ``method=seqkd`` is CE on the generated
responses; as a base under an auxiliary objective it adds CE as ``sft`` does, on the generated data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distillkit.methods.base import ObjectiveConfig
from distillkit.methods.sft import SFT


@dataclass
class SeqKDConfig(ObjectiveConfig):
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 10
    max_prompt_tokens: int = 256
    max_total_tokens: int = 512
    no_repeat_ngram_size: int = 0  # MiniLLM's generation script passes none
    batch_size: int = 16
    shard_size: int = 64  # generations per cache shard (an interrupted generation resumes by shard)
    cache_dir: Optional[str] = None


class SeqKD(SFT):
    name = "seqkd"
    kind = "base"
    Config = SeqKDConfig
    needs_teacher_model = True  # for data preparation only: the step runs no teacher forward

    def data_transforms(self, teacher, student) -> list:
        from distillkit.data.teacher_generated import teacher_generated_rows

        c = self.cfg
        sampling = {
            "seed": c.seed,
            "do_sample": True,
            "top_k": c.top_k,
            "top_p": c.top_p,
            "temperature": c.temperature,
            "no_repeat_ngram_size": c.no_repeat_ngram_size,
            "max_prompt_tokens": c.max_prompt_tokens,
            "max_total_tokens": c.max_total_tokens,
            "batch_size": c.batch_size,
        }
        return [
            teacher_generated_rows(
                teacher, sampling=sampling, cache_root=c.cache_dir, shard_size=c.shard_size
            )
        ]
