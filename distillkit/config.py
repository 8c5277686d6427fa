"""Structured configs: the schema of every typed config group, registered in Hydra's ConfigStore.

Each YAML option of a typed group starts with ``defaults: [<schema name>, _self_]`` so that a
typo (``model.teacher.layerz=3``) or a wrong type (``trainer.max_steps=ten``) fails when the
config is composed, before anything is loaded. Choices with a closed set of values are enums, so
a bad value is reported with the list of valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Choice(str, Enum):
    """A closed choice whose ``str()``/``format()`` is its value (``f"{Template.none}"`` is
    ``"none"``), so it prints, hashes and compares like the plain string it replaced. Each member's
    name equals its value (``Enum`` hashes by name)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


# after Choice: distillkit.utils.optim defines its enum on it
from distillkit.utils.optim import NoDecay  # noqa: E402


class Divergence(str, Enum):
    fkl = "fkl"
    rkl = "rkl"
    js = "js"
    tvd = "tvd"
    skl = "skl"
    srkl = "srkl"
    akl = "akl"


class Init(Choice):
    pretrained = "pretrained"
    random = "random"


class Stage(Choice):
    distill = "distill"
    teacher_sft = "teacher_sft"


class Source(Choice):
    synthetic = "synthetic"
    jsonl = "jsonl"
    dolly_hub = "dolly_hub"


class DType(Choice):
    """A model's weight dtype. ``auto``: bfloat16 for a frozen teacher on a GPU with bf16, float32
    otherwise (a CPU, and any trained model: its master weights; ``strategy.precision`` decides the
    compute dtype). See ``distillkit.models.pair.resolve_dtype``."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


# ----------------------------------------------------------------------------- model
@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None: peft's default for the architecture


@dataclass
class ModelSideConfig:
    """One model of the pair.

    ``path``: an HF hub id or a local folder with the weights (``init: pretrained``).
    ``tokenizer``: an HF id / local folder, or ``tiny:<bpe|unigram>:<vocab>[:<corpus>]`` for a
    tokenizer the project trains itself (cached). Defaults to ``path``.
    ``init: random`` builds the model from ``arch`` (an HF ``model_type``: gpt2, qwen2, llama,
    mistral, opt) and ``arch_config`` (its settings, no hub look-up), shrunk by the normalized
    overrides ``layers``/``hidden``/``heads``/``intermediate`` (which work for every family).
    """

    path: Optional[str] = None
    tokenizer: Optional[str] = None
    init: Init = Init.pretrained
    arch: Optional[str] = None
    arch_config: dict[str, Any] = field(default_factory=dict)
    layers: Optional[int] = None
    hidden: Optional[int] = None
    heads: Optional[int] = None
    intermediate: Optional[int] = None
    dtype: DType = DType.auto
    attn_implementation: Optional[str] = None
    lora: Optional[LoraConfig] = None


@dataclass
class TeacherSFTConfig:
    """Fine-tune the teacher first (the papers fine-tune it on Dolly) and cache the result."""

    enabled: bool = False
    max_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 16
    warmup_steps: int = 10
    seed: int = 0  # the teacher is one artifact for every student seed (not the run's seed)


@dataclass
class ModelPairConfig:
    name: str = "custom"
    teacher: ModelSideConfig = field(default_factory=ModelSideConfig)
    student: ModelSideConfig = field(default_factory=ModelSideConfig)
    teacher_sft: TeacherSFTConfig = field(default_factory=TeacherSFTConfig)
    # the reference layer mapping of this pair (MTA §2.4): teacher / student hidden_states indices
    teacher_layers: list[int] = field(default_factory=list)
    student_layers: list[int] = field(default_factory=list)
    # the pair's SRA layer map (ctkd.md §2.5; empty: the last layer of each model)
    sra_teacher_layers: list[int] = field(default_factory=list)
    sra_student_layers: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- data
class Template(Choice):
    """The prompt template (``distillkit.data.template.format_prompt``)."""

    minillm = "minillm"  # the MiniLLM/DSKD template, the papers' default
    chat = "chat"  # the tokenizer's chat template (one user turn)
    none = "none"  # the bare instruction (+ input)


class OnBadRows(Choice):
    """What a line of a data file that is not valid JSON does (it is reported with file and line)."""

    fail = "fail"  # stop before training, naming the file and the line (the default)
    skip = "skip"  # drop the line, count it in the data report (``dropped.<split>.bad_json``), go on


@dataclass
class SyntheticConfig:
    n_train: int = 3000
    n_dev: int = 200
    n_test: int = 200
    seed: int = 0


@dataclass
class DataConfig:
    """Where rows come from and how they become batches.

    ``jsonl``: MiniLLM/DSKD-format files under ``root`` with per-split globs (``train``/``dev``/
    ``test``; in the MiniLLM layout ``valid.jsonl`` is the test split). ``dolly_hub``: the
    databricks-dolly-15k hub dataset, split the MiniLLM way. ``synthetic``: generated here.
    ``on_bad_rows``: a file line that is not valid JSON fails the run (``fail``, naming file and
    line) or is dropped and counted (``skip``); rows that are JSON but unusable (no instruction,
    empty output) are always dropped and counted.
    """

    name: str = "synthetic"
    source: Source = Source.synthetic
    root: Optional[str] = None
    train: Optional[str] = None
    dev: Optional[str] = None
    test: Optional[str] = None
    hub_id: str = "databricks/databricks-dolly-15k"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    template: Template = Template.minillm
    on_bad_rows: OnBadRows = OnBadRows.fail
    max_prompt_tokens: int = 256
    max_total_tokens: int = 512
    max_train_rows: Optional[int] = None
    max_dev_rows: Optional[int] = None
    batch_size: int = 8
    eval_batch_size: int = 16
    # loader worker processes and pinned memory; null: 0 workers and no pinning on a CPU, up to 4 workers
    # per process and pinned memory on a GPU (distillkit.data.datamodule.loader_settings)
    num_workers: Optional[int] = None
    pin_memory: Optional[bool] = None
    shuffle_seed: int = 1234


# ----------------------------------------------------------------------------- methods
# Each objective's schema lives beside its class (distillkit/methods/); these enums are shared.
class Level(str, Enum):
    both = "both"  # the reference: the first `word_pairs` mapped pairs at word level, the rest phrase level
    word = "word"  # ablation: every mapped pair at word level
    phrase = "phrase"  # ablation: every mapped pair at phrase level


class TokenWeights(str, Enum):
    self_similarity = "self_similarity"  # the reference's parameter-free attention (papers.md §2.2)
    attention = "attention"  # the model's own attention received (eager attention)
    entropy = "entropy"  # teacher confidence 1 - H(p_T)/log|V| replaces the teacher weights
    uniform = "uniform"  # no token weights


class LayerMapKind(Choice):
    reference = "reference"  # the model pair's own map (model.teacher_layers / model.student_layers)
    explicit = "explicit"  # layer_map.teacher / layer_map.student lists
    uniform = "uniform"  # num_pairs pairs spread evenly over both depths
    last = "last"  # the last layer of each model


@dataclass
class LayerMapConfig:
    """Which teacher/student ``hidden_states`` are aligned (0 = embeddings, n = last layer).

    ``reference``: the model pair's own mapping (``model.teacher_layers``/``model.student_layers``,
    papers.md §2.4), optionally cut to its first ``num_pairs``; ``explicit``: ``teacher``/``student``
    lists; ``uniform``: ``num_pairs`` pairs spread evenly over both depths; ``last``: the last layers.
    The first ``word_pairs`` pairs are word level, the others phrase level (reference: 1).
    """

    kind: LayerMapKind = LayerMapKind.reference
    teacher: list[int] = field(default_factory=list)
    student: list[int] = field(default_factory=list)
    num_pairs: Optional[int] = None
    word_pairs: int = 1


# ----------------------------------------------------------------------------- training
class Schedule(Choice):
    """The learning-rate schedule after the linear warmup (``transformers.get_scheduler``)."""

    cosine = "cosine"
    constant = "constant"
    linear = "linear"


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    schedule: Schedule = Schedule.cosine
    # cosine only: decay to this lr instead of 0 (transformers' cosine_with_min_lr; SRA: 5e-6)
    min_lr: Optional[float] = None
    projector_lr: Optional[float] = None
    # student parameters exempt from weight decay (distillkit/utils/optim.py, docs/fidelity.md):
    # norms_and_biases (DistiLLM/DSKD get_optimizer_params, by module type) | reference_names | none
    no_decay: NoDecay = NoDecay.norms_and_biases
    # the projectors' weight decay; null: the objective's own or the reference's choice (utils/optim.py)
    projector_weight_decay: Optional[float] = None


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` that distillkit sets (everything else: ``+trainer.extra.X=...``)."""

    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    val_check_interval: Optional[float] = None
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    log_every_n_steps: int = 10
    fast_dev_run: bool = False
    deterministic: bool = False
    enable_progress_bar: Optional[bool] = None  # None: only when a terminal is attached
    optim: OptimConfig = field(default_factory=OptimConfig)
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- evaluate
class EvalDType(Choice):
    """``python -m distillkit.evaluate dtype=...``: the weights' dtype (auto: bf16 on a GPU that has it)."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class EvaluateConfig:
    """The top level of ``conf/evaluate.yaml`` (``python -m distillkit.evaluate``): a typo or a bad
    ``dtype`` fails at compose time. ``eval`` is the protocol group (``_target_`` EvalProtocol)."""

    model_path: str = MISSING
    tokenizer_path: Optional[str] = None
    data_root: Optional[str] = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (checked before loading)
    dtype: EvalDType = EvalDType.auto
    out_dir: Optional[str] = None
    batch_size: Optional[int] = None
    eval: Any = None


def register_configs() -> None:
    cs = ConfigStore.instance()
    # Schemas live in their own groups (``schema/<group>``) so they never show up as options of
    # the real groups; each YAML option pulls its schema in with ``- /schema/<group>@_here_: <name>``.
    cs.store(group="schema/model", name="pair", node=ModelPairConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConfig)
    cs.store(group="schema/layer_map", name="layer_map", node=LayerMapConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


def value(x: Any) -> Any:
    """The plain value of an enum config field (OmegaConf hands enum members back)."""
    return x.value if isinstance(x, Enum) else x


# ----------------------------------------------------------------------------- resolvers
#: top-level keys left out of the config a logger records: Hydra's own node, and the logger's
#: node itself (it holds the interpolation that produces this config)
_NOT_RECORDED = ("hydra", "logger")


def run_config(*, _root_: Any) -> dict[str, Any]:
    """``${distillkit.run_config:}``: the whole composed config, resolved, as plain values (enums
    as their names), without ``hydra`` and ``logger``: what a logger records as the run's config."""
    out: dict[str, Any] = {}
    for key in _root_:
        if key in _NOT_RECORDED:
            continue
        node = _root_._get_node(key)
        if OmegaConf.is_config(node):
            out[key] = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        else:
            got = _root_[key]
            out[key] = got.value if isinstance(got, Enum) else got
    return out


def first_set(*choices: Any) -> Any:
    """``${distillkit.first_set:a,b,...}``: the first choice that is neither null nor empty."""
    return next((c for c in choices if c not in (None, "")), None)


def join_name(*parts: Any) -> str:
    """``${distillkit.join_name:a,b,...}``: the non-empty parts joined with ``-`` (a run name from a
    fixed stem and, say, Hydra's ``job.override_dirname`` which is empty for a single run)."""
    return "-".join(str(p) for p in parts if p not in (None, ""))


for _name, _fn in (
    ("distillkit.run_config", run_config),
    ("distillkit.join_name", join_name),
    ("distillkit.first_set", first_set),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


register_configs()
# every objective's schema lives beside its class: importing the registry stores schema/method/<name>
# (a method preset) and, for base objectives, schema/method_base/<name> (an option of method/base).
# Imported last, so the objectives' own `from distillkit.config import ...` finds every name defined.
import distillkit.methods  # noqa: E402,F401
