"""Dev-set generation ROUGE-L during training, for checkpoint selection as the papers do.

A cheap protocol: the first ``max_prompts`` dev rows, one generation seed (greedy by default).
Logs ``val/rougeL`` so ``ModelCheckpoint(monitor="val/rougeL", mode="max")`` keeps the best.
The prompts use the template the student trains on (the datamodule's ``data.template``) unless
``template`` is given (``callbacks.dev_rouge.template=...``); :attr:`DevRouge.used_template` says which.

``select_on_test_split_UNSAFE=True`` scores the data's TEST split instead of its dev split: the SRA
authors' selection (``wind123mountain/SRE`` selects on ``dolly/valid.jsonl``, the Dolly test split of the
MiniLLM layout). It leaks the test set into checkpoint selection, so the test scores that follow are
optimistic; it exists only to reproduce that protocol, warns loudly, and is off by default.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

TEST_SELECTION_WARNING = (
    "UNSAFE: callbacks.dev_rouge.select_on_test_split_UNSAFE=true: checkpoints are selected by ROUGE-L on "
    "the TEST split (the SRA authors' protocol); the test scores of this run are optimistic and not "
    "comparable to a dev-selected run."
)


class DevRouge(L.Callback):
    def __init__(
        self,
        max_prompts: int = 100,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        seed: int = 10,
        batch_size: int = 32,
        template: str | None = None,
        select_on_test_split_UNSAFE: bool = False,  # noqa: N803 - the name is meant to shout
    ):
        from distillkit.data.template import TEMPLATES

        if template is not None and template not in TEMPLATES:
            raise ValueError(
                f"callbacks.dev_rouge.template={template!r}; valid: {', '.join(TEMPLATES)} "
                "or null (the training data's template)"
            )
        self.max_prompts, self.max_new_tokens = max_prompts, max_new_tokens
        self.do_sample, self.seed, self.batch_size, self.template = do_sample, seed, batch_size, template
        #: the template the last scoring used (``None`` until it ran)
        self.used_template: str | None = None
        if not isinstance(select_on_test_split_UNSAFE, bool):
            raise ValueError(
                f"callbacks.dev_rouge.select_on_test_split_UNSAFE={select_on_test_split_UNSAFE!r}; "
                "must be true or false"
            )
        #: the split scored: ``dev``, or ``test`` under ``select_on_test_split_UNSAFE``
        self.split = "test" if select_on_test_split_UNSAFE else "dev"
        if self.split == "test":
            log.warning(TEST_SELECTION_WARNING)

    def resolve_template(self, data_cfg: Any) -> str:
        """``template`` when set, else the training data's (``data.template``)."""
        from distillkit.config import value

        if self.template is not None:
            return self.template
        return str(value(data_cfg.template))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        rows = (getattr(dm, "rows", {}) or {}).get(self.split) or []
        if not rows:
            if self.split == "test":
                raise ValueError(
                    "callbacks.dev_rouge.select_on_test_split_UNSAFE=true but the data has no test split (data.test)"
                )
            return
        score = self.score(pl_module.student, pl_module.student_tokenizer, rows[: self.max_prompts], dm.cfg)
        pl_module.log("val/rougeL", torch.tensor(score), prog_bar=True, sync_dist=True)

    def score(self, model: Any, tokenizer: Any, rows: list[dict], data_cfg: Any) -> float:
        from distillkit.data.template import references
        from distillkit.eval.generate import generate_responses
        from distillkit.eval.protocol import row_prompt
        from distillkit.eval.rouge import rouge_l

        template = self.resolve_template(data_cfg)
        if template != self.used_template:
            log.info("dev ROUGE-L prompts use template %r", template)
            self.used_template = template
        prompts = [row_prompt(r, template, tokenizer) for r in rows]
        outputs = generate_responses(
            model,
            tokenizer,
            prompts,
            seed=self.seed,
            do_sample=self.do_sample,
            max_prompt_tokens=data_cfg.max_prompt_tokens,
            max_total_tokens=data_cfg.max_total_tokens,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            no_repeat_ngram_size=0,
        )
        scores = [rouge_l(o, references(r)) for o, r in zip(outputs, rows)]
        return sum(scores) / max(len(scores), 1)
