"""Generation evaluation: protocols (``conf/eval``), batched seeded generation, ROUGE-L.

Typical use (the training run's final evaluation)::

    from distillkit.eval import evaluate, protocol_from_config
    protocol = protocol_from_config(cfg.eval)      # None for eval=none
    if protocol is not None:
        results["eval"] = evaluate(student, tokenizer, protocol, data_root, run_dir)
"""

from distillkit.eval.generate import generate_responses
from distillkit.eval.harness import evaluate
from distillkit.eval.protocol import (
    EvalProtocol,
    available_protocols,
    load_protocol,
    protocol_from_config,
    resolve_template,
    row_prompt,
)
from distillkit.eval.rouge import rouge_l

__all__ = [
    "EvalProtocol",
    "available_protocols",
    "evaluate",
    "generate_responses",
    "load_protocol",
    "protocol_from_config",
    "resolve_template",
    "rouge_l",
    "row_prompt",
]
