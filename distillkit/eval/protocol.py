"""Evaluation protocols as data: which sets, which seeds, how to generate.

A protocol is a plain dataclass; the YAMLs in ``conf/eval/`` instantiate it through Hydra
(``_target_: distillkit.eval.protocol.EvalProtocol``). ``conf/eval/none.yaml`` sets ``eval`` to
``null``: :func:`protocol_from_config` turns that into ``None`` (no evaluation).

Prompt length: the papers keep the FIRST ``max_prompt_tokens`` tokens of a longer prompt
(DSKD ``PromptDataset``: ``prompt_ids[:max_prompt_length]``; MTA's eval package: the tokenizer's
right-side truncation), so we do too, although it can cut off the ``### Response:`` line.

Response length: DSKD left-pads every prompt to ``max_prompt_tokens`` and asks for
``max_length - prompt_width`` new tokens, i.e. ``max_total_tokens - max_prompt_tokens`` for every
prompt whatever its length; :meth:`EvalProtocol.new_token_budget` does the same (capped further by
``max_new_tokens`` when set). MTA's package sets ``max_new_tokens=384`` and no total.

What each protocol reproduces, and from which file, is listed in ``docs/fidelity.md``: references
(``all``: max ROUGE-L over a row's references, DSKD/MiniLLM ``rouge_metric.py``; ``first``: the first only,
the MTA and SRA evaluators), the tokenizer's own special tokens on the prompt (``add_special_tokens``),
the stop rule, and per-set prompt caps (``set_max_prompts``: DSKD's ``DATA_NUM`` 10000 for UnNI).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillkit.data.template import TEMPLATES, format_prompt

CONF_EVAL_DIR = Path(__file__).resolve().parents[2] / "conf" / "eval"
#: how a row's references are scored: max over all (DSKD/MiniLLM), or the first only (MTA, SRA evaluators)
REFERENCE_MODES = ("all", "first")
#: how the stop string stops a sequence (distillkit.eval.generate)
STOP_RULES = ("string", "token")


def new_token_budget(max_prompt_tokens: int, max_total_tokens: int | None, max_new_tokens: int | None) -> int:
    """New tokens per prompt: ``max_total - max_prompt`` (DSKD), capped by ``max_new_tokens``."""
    budgets = []
    if max_total_tokens is not None:
        budgets.append(max_total_tokens - max_prompt_tokens)
    if max_new_tokens is not None:
        budgets.append(max_new_tokens)
    if not budgets:
        raise ValueError("Set max_total_tokens or max_new_tokens: generation needs a length limit.")
    budget = min(budgets)
    if budget < 1:
        raise ValueError(
            f"No room for a response: max_prompt_tokens={max_prompt_tokens}, max_total_tokens={max_total_tokens}, "
            f"max_new_tokens={max_new_tokens} give a budget of {budget} new tokens."
        )
    return budget


@dataclass
class EvalProtocol:
    """One evaluation protocol (see ``conf/eval/*.yaml`` and papers.md §5).

    ``sets`` maps a set name to its file, relative to the data root. ``seeds`` are generation
    seeds: each set is generated and scored once per seed, and the spread over them is reported.
    ``max_prompts`` keeps the first N rows of every set (``None``: all); ``set_max_prompts`` caps named
    sets further (the tighter cap wins). ``references``: ``all`` (max over a row's references) or
    ``first``. ``add_special_tokens``: the prompt gets the tokenizer's own special tokens (a BOS).
    ``stop_rule`` (``string`` | ``token``) and ``keep_stop`` (leave the stop string in the scored text):
    see :mod:`distillkit.eval.generate`.
    """

    name: str
    sets: dict[str, str]
    seeds: list[int]
    do_sample: bool = True
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    no_repeat_ngram_size: int = 6
    max_prompt_tokens: int = 256
    max_total_tokens: int | None = 512
    max_new_tokens: int | None = None
    stop: str | None = None
    max_prompts: int | None = None
    batch_size: int = 16
    #: the prompt template; ``None`` (the YAMLs' default): the template the model was trained with
    #: (``data.template`` of a training run, see :func:`resolve_template`)
    template: str | None = None
    references: str = "all"
    add_special_tokens: bool = False
    stop_rule: str = "string"
    keep_stop: bool = False
    set_max_prompts: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hydra hands over DictConfig/ListConfig unless _convert_=all: normalise to plain types.
        self.sets = {str(k): str(v) for k, v in dict(self.sets or {}).items()}
        self.seeds = [int(s) for s in list(self.seeds or [])]
        self.set_max_prompts = {str(k): v for k, v in dict(self.set_max_prompts or {}).items()}
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and its valid range."""
        if not self.sets:
            raise ValueError(f"EvalProtocol {self.name!r}: 'sets' is empty; give at least one name: path.")
        if not self.seeds:
            raise ValueError(
                f"EvalProtocol {self.name!r}: 'seeds' is empty; give at least one generation seed."
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"EvalProtocol {self.name!r}: duplicate seeds {self.seeds}.")
        if self.template is not None and self.template not in TEMPLATES:
            raise ValueError(
                f"EvalProtocol {self.name!r}: template={self.template!r}; valid: {', '.join(TEMPLATES)} "
                "or null (the training data's template)"
            )
        if self.top_k < 0:
            raise ValueError(f"EvalProtocol {self.name!r}: top_k={self.top_k}; must be >= 0 (0 = no top-k).")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"EvalProtocol {self.name!r}: top_p={self.top_p}; must be in (0, 1].")
        if self.temperature <= 0:
            raise ValueError(f"EvalProtocol {self.name!r}: temperature={self.temperature}; must be > 0.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"EvalProtocol {self.name!r}: no_repeat_ngram_size={self.no_repeat_ngram_size}; must be >= 0 (0 = off)."
            )
        if self.max_prompt_tokens < 1:
            raise ValueError(
                f"EvalProtocol {self.name!r}: max_prompt_tokens={self.max_prompt_tokens}; must be >= 1."
            )
        if self.max_total_tokens is None and self.max_new_tokens is None:
            raise ValueError(
                f"EvalProtocol {self.name!r}: set max_total_tokens or max_new_tokens (both are null), "
                "otherwise generation has no length limit."
            )
        if self.max_total_tokens is not None and self.max_total_tokens <= self.max_prompt_tokens:
            raise ValueError(
                f"EvalProtocol {self.name!r}: max_total_tokens={self.max_total_tokens} leaves no room for a "
                f"response after max_prompt_tokens={self.max_prompt_tokens}; it must be larger."
            )
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(
                f"EvalProtocol {self.name!r}: max_new_tokens={self.max_new_tokens}; must be >= 1 or null."
            )
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(
                f"EvalProtocol {self.name!r}: max_prompts={self.max_prompts}; must be >= 1 or null."
            )
        if self.batch_size < 1:
            raise ValueError(f"EvalProtocol {self.name!r}: batch_size={self.batch_size}; must be >= 1.")
        if self.stop is not None and not self.stop:
            raise ValueError(
                f"EvalProtocol {self.name!r}: stop is an empty string; use null for no stop string."
            )
        if self.references not in REFERENCE_MODES:
            raise ValueError(
                f"EvalProtocol {self.name!r}: references={self.references!r}; valid: {', '.join(REFERENCE_MODES)}"
            )
        if self.stop_rule not in STOP_RULES:
            raise ValueError(
                f"EvalProtocol {self.name!r}: stop_rule={self.stop_rule!r}; valid: {', '.join(STOP_RULES)}"
            )
        for flag in ("add_special_tokens", "keep_stop"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(
                    f"EvalProtocol {self.name!r}: {flag}={getattr(self, flag)!r}; must be true or false."
                )
        unknown = sorted(set(self.set_max_prompts) - set(self.sets))
        if unknown:
            raise ValueError(
                f"EvalProtocol {self.name!r}: set_max_prompts names sets {unknown} that are not in sets; "
                f"valid: {', '.join(self.sets)}"
            )
        for set_name, cap in self.set_max_prompts.items():
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(
                    f"EvalProtocol {self.name!r}: set_max_prompts.{set_name}={cap!r}; must be an integer >= 1."
                )

    def prompt_cap(self, set_name: str) -> int | None:
        """How many rows of ``set_name`` are evaluated (the first N): the tighter of ``max_prompts`` and
        ``set_max_prompts[set_name]``; ``None`` for all."""
        caps = [c for c in (self.max_prompts, self.set_max_prompts.get(set_name)) if c is not None]
        return min(caps) if caps else None

    def row_references(self, refs: list[str]) -> list[str]:
        """The references a row is scored against: all of them, or the first (``references=first``)."""
        return list(refs[:1]) if self.references == "first" else list(refs)

    def new_token_budget(self) -> int:
        """New tokens per prompt: ``max_total - max_prompt`` (DSKD), capped by ``max_new_tokens``."""
        return new_token_budget(self.max_prompt_tokens, self.max_total_tokens, self.max_new_tokens)

    def generation_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`distillkit.eval.generate.generate_responses`."""
        return {
            "do_sample": self.do_sample,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_total_tokens": self.max_total_tokens,
            "max_new_tokens": self.max_new_tokens,
            "stop": self.stop,
            "batch_size": self.batch_size,
            "add_special_tokens": self.add_special_tokens,
            "stop_rule": self.stop_rule,
            "keep_stop": self.keep_stop,
        }

    def replace(self, **changes: Any) -> EvalProtocol:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the template when neither the protocol nor the caller names one: the papers' (MiniLLM/DSKD)
DEFAULT_TEMPLATE = "minillm"


def resolve_template(
    protocol: EvalProtocol, template: str | None = None, source: str = "caller"
) -> tuple[str, str]:
    """The template to generate from and where it came from: the protocol's own (``eval.template``,
    set explicitly), else ``template`` (a training run passes its ``data.template``, with ``source``
    naming it), else :data:`DEFAULT_TEMPLATE` (``"default"``)."""
    if protocol.template is not None:
        return protocol.template, "eval.template"
    if template is not None:
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r} ({source}); valid: {', '.join(TEMPLATES)}")
        return template, source
    return DEFAULT_TEMPLATE, "default"


def row_prompt(row: dict[str, Any], template: str = "minillm", tokenizer: Any = None) -> str:
    """The prompt of a data row: its ``prompt`` field if present, else the formatted template."""
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    return format_prompt(row, template, tokenizer)


def protocol_from_config(cfg: Any) -> EvalProtocol | None:
    """An :class:`EvalProtocol` from a config node (DictConfig / dict with or without ``_target_``),
    an existing protocol, or ``None`` (``conf/eval/none.yaml``: no evaluation)."""
    if cfg is None or isinstance(cfg, EvalProtocol):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, dict):
        raise TypeError(
            f"An eval protocol config must be a mapping or null; got {type(cfg).__name__}: {cfg!r}"
        )
    cfg = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    valid = {f.name for f in dataclasses.fields(EvalProtocol)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"Unknown eval protocol keys {unknown}; valid: {', '.join(sorted(valid))}")
    return EvalProtocol(**cfg)


def available_protocols() -> list[str]:
    """The names of the YAMLs in ``conf/eval/``."""
    return sorted(p.stem for p in CONF_EVAL_DIR.glob("*.yaml"))


def load_protocol(name: str, conf_dir: Path | None = None, **overrides: Any) -> EvalProtocol | None:
    """Load ``conf/eval/<name>.yaml`` outside Hydra (``none`` gives ``None``).

    Interpolations into the run config (``dev.yaml``'s ``${oc.select:data.dev,...}``)
    fall back to their defaults here. ``overrides`` replace fields after loading.
    """
    from omegaconf import OmegaConf

    conf_dir = Path(conf_dir) if conf_dir is not None else CONF_EVAL_DIR
    path = conf_dir / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in conf_dir.glob("*.yaml"))
        raise ValueError(f"Unknown eval protocol {name!r}; valid: {', '.join(choices)}")
    cfg = OmegaConf.load(path)
    if "eval" in cfg and len(cfg) == 1:  # a `# @package _global_` file such as none.yaml
        cfg = cfg["eval"]
    protocol = protocol_from_config(cfg)
    if protocol is None:
        if overrides:
            raise ValueError(
                f"Eval protocol {name!r} is 'no evaluation'; it takes no overrides ({overrides})."
            )
        return None
    return protocol.replace(**overrides) if overrides else protocol
