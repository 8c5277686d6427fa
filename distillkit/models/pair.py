"""Loading a teacher/student pair: tokenizers, weights or random init, freezing, LoRA.

Model-family quirks live here (DESIGN principle 9), never in loss code: e.g. Qwen's embedding
has 151,936 rows for 151,646 tokens, so :class:`LoadedModel` slices logits to the tokenizer's
real vocabulary.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillkit.checks import TINY_PREFIX
from distillkit.config import value
from distillkit.errors import ModelLoadError
from distillkit.models.depth import check_model_path
from distillkit.utils.io import data_root as resolve_data_root
from distillkit.utils.io import read_jsonl

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Normalized shrink overrides -> the attribute each family uses. HF configs map the standard
# names (num_hidden_layers, hidden_size, num_attention_heads) through ``attribute_map`` already;
# only the MLP width differs by family.
_INTERMEDIATE_KEYS = ("n_inner", "ffn_dim", "intermediate_size")


@dataclass
class LoadedModel:
    """A causal LM with its own tokenizer and the facts the rest of distillkit needs."""

    model: nn.Module
    tokenizer: Any
    role: str  # "teacher" | "student"

    @property
    def vocab_size(self) -> int:
        """The tokenizer's real vocabulary (embedding rows beyond it are padding)."""
        return len(self.tokenizer)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def head(self):
        """The output head as a handle (:class:`~distillkit.models.handles.OutputHead`), sliced to the vocabulary."""
        from distillkit.models.handles import OutputHead

        return OutputHead(self.model, self.vocab_size)

    def embedding(self):
        """The input-embedding lookup as a handle (:class:`~distillkit.models.handles.InputEmbedding`)."""
        from distillkit.models.handles import InputEmbedding

        return InputEmbedding(self.model)


def same_vocabulary(tok_a: Any, tok_b: Any) -> bool:
    """True when both tokenizers map the same strings to the same ids (not: same embedding size)."""
    if tok_a is tok_b:
        return True
    return len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


# ----------------------------------------------------------------------------- tokenizers
def load_tokenizer(spec: str | None, role: str, cache_root: str | None = None) -> Any:
    """An HF tokenizer from an id/folder, or a project-trained one from ``tiny:<kind>:<vocab>[:<corpus>]``."""
    from transformers import AutoTokenizer

    if not spec:
        raise ModelLoadError(
            f"No tokenizer for the {role}: set model.{role}.tokenizer (or model.{role}.path)."
        )
    if spec.startswith(TINY_PREFIX):
        path = _tiny_tokenizer_path(spec, role, cache_root)
    else:
        check_model_path(spec, f"model.{role}.tokenizer (or model.{role}.path)", "tokenizer")
        path = spec
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Could not load the {role} tokenizer {spec!r}: {err}. Offline, point "
            f"model.{role}.tokenizer (or model.{role}.path) at a local folder with the tokenizer files."
        ) from err
    return tok


def _tiny_tokenizer_path(spec: str, role: str, cache_root: str | None) -> Path:
    from distillkit.models.tokenizers import cached_tiny_tokenizer

    parts = spec[len(TINY_PREFIX) :].split(":")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise ModelLoadError(
            f"model.{role}.tokenizer={spec!r}: expected tiny:<bpe|unigram>:<vocab size>[:<synthetic|dolly>]"
        )
    kind, vocab = parts[0], int(parts[1])
    corpus = parts[2] if len(parts) == 3 else "synthetic"
    texts = None
    if corpus == "dolly":
        texts = dolly_corpus_texts()
    elif corpus != "synthetic":
        raise ModelLoadError(
            f"model.{role}.tokenizer={spec!r}: corpus {corpus!r} unknown; valid: synthetic, dolly"
        )
    return Path(cached_tiny_tokenizer(kind, vocab, corpus=corpus, cache_root=cache_root, texts=texts))


def dolly_corpus_texts() -> list[str]:
    """Instruction/input/output texts of the Dolly train split under the data root (tokenizer training)."""
    root = resolve_data_root()
    files = sorted(glob.glob(str(root / "dolly" / "train.part*.jsonl")))
    if not files:
        raise ModelLoadError(
            f"No Dolly train files under {root / 'dolly'} (needed by a tiny:*:dolly tokenizer)."
        )
    texts = []
    for f in files:
        for row in read_jsonl(f):
            texts.extend(str(row.get(k) or "") for k in ("instruction", "input", "output"))
    return [t for t in texts if t]


# ----------------------------------------------------------------------------- models
def build_config(side: Any, tokenizer: Any, role: str) -> Any:
    """An HF config for ``init: random``: ``arch`` + ``arch_config`` + normalized shrink overrides."""
    from transformers import AutoConfig

    if not side.arch:
        raise ModelLoadError(
            f"model.{role}.init=random needs model.{role}.arch (gpt2, qwen2, llama, mistral, opt)."
        )
    settings = dict(side.arch_config or {})
    settings.setdefault("vocab_size", len(tokenizer))
    # the tokenizer's special ids go in with the vocabulary size, so the config never holds the
    # family's defaults (GPT-2: 50256) against a small vocabulary, not even transiently (HF warns)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            settings.setdefault(name, getattr(tokenizer, name))
    try:
        config = AutoConfig.for_model(side.arch, **settings)
    except ValueError as err:
        raise ModelLoadError(f"model.{role}.arch={side.arch!r}: {err}") from err
    if side.layers is not None:
        config.num_hidden_layers = int(side.layers)
    if side.heads is not None:
        config.num_attention_heads = int(side.heads)
    if side.hidden is not None:
        config.hidden_size = int(side.hidden)
        if hasattr(config, "word_embed_proj_dim"):  # OPT projects embeddings to this width
            config.word_embed_proj_dim = int(side.hidden)
        if hasattr(config, "head_dim") and getattr(config, "head_dim", None):
            config.head_dim = config.hidden_size // config.num_attention_heads
    if side.intermediate is not None:
        for key in _INTERMEDIATE_KEYS:
            if hasattr(config, key):
                setattr(config, key, int(side.intermediate))
    kv = getattr(config, "num_key_value_heads", None)
    if kv is not None and config.num_attention_heads % kv != 0:
        config.num_key_value_heads = config.num_attention_heads
    if kv is not None and kv > config.num_attention_heads:
        config.num_key_value_heads = config.num_attention_heads
    if config.hidden_size % config.num_attention_heads != 0:
        raise ModelLoadError(
            f"model.{role}: hidden size {config.hidden_size} is not divisible by {config.num_attention_heads} heads; "
            f"set model.{role}.heads too."
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            setattr(config, name, value)
    return config


def on_gpu(accelerator: str | None) -> bool:
    """Whether ``strategy.accelerator`` runs on a CUDA GPU (``auto``: when one is visible)."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda"):
        return True
    return name == "auto" and torch.cuda.is_available()


def resolve_dtype(dtype: Any, *, frozen: bool, accelerator: str | None = "auto") -> torch.dtype:
    """The weight dtype of a model: an explicit ``model.<role>.dtype`` as given; ``auto`` is bfloat16 for a
    frozen model (the distillation teacher) on a GPU that supports it, float32 otherwise: on a CPU (bf16
    matmuls are slow there and the tests compare float32 numbers) and for a model that trains (the
    student, or the teacher in its own fine-tuning), whose float32 master weights ``strategy.precision``
    casts for compute (``bf16-mixed`` autocasts, ``bf16-true`` casts the weights)."""
    name = value(dtype)
    if name != "auto":
        return _DTYPES[name]
    if frozen and on_gpu(accelerator) and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    side: Any,
    role: str,
    cache_root: str | None = None,
    weights_path: str | None = None,
    attn_implementation: str | None = None,
    *,
    frozen: bool | None = None,
    accelerator: str | None = "auto",
) -> LoadedModel:
    """Tokenizer + causal LM of one side. ``weights_path`` overrides ``side.path`` (a cached SFT teacher).
    ``frozen`` (default: ``role == "teacher"``) and ``accelerator`` decide ``dtype: auto`` (:func:`resolve_dtype`)."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(side.tokenizer or weights_path or side.path, role, cache_root)
    frozen = role == "teacher" if frozen is None else frozen
    dtype = resolve_dtype(side.dtype, frozen=frozen, accelerator=accelerator)
    kwargs: dict[str, Any] = {"dtype": dtype}
    attn = attn_implementation or side.attn_implementation
    if attn:
        kwargs["attn_implementation"] = attn
    init = value(side.init)
    path = weights_path or side.path
    if weights_path or init == "pretrained":
        if not path:
            raise ModelLoadError(
                f"model.{role}.path is empty: give an HF id or a local folder, or set init=random."
            )
        check_model_path(str(path), f"model.{role}.path")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as err:
            hint = (
                ""
                if os.path.isdir(str(path))
                else " (not a local folder, and the hub is unreachable offline)"
            )
            raise ModelLoadError(
                f"Could not load the {role} weights {path!r}{hint}: {err}. Point model.{role}.path at a local "
                f"folder with config.json and the weights, or use model.{role}.init=random."
            ) from err
    else:
        config = build_config(side, tokenizer, role)
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, **({"attn_implementation": attn} if attn else {})
        )
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ModelLoadError(
            f"The {role}'s embedding has {model.get_input_embeddings().num_embeddings} rows but its tokenizer "
            f"has {len(tokenizer)} tokens: the tokenizer does not belong to these weights."
        )
    if side.lora is not None:
        model = apply_lora(model, side.lora)
    return LoadedModel(model=model, tokenizer=tokenizer, role=role)


def apply_lora(model: nn.Module, lora: Any) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def freeze(model: nn.Module) -> nn.Module:
    """The teacher: eval mode, no gradients (it also stays out of the optimizer)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_student(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """``save_pretrained`` of the student alone (LoRA merged; projectors are not part of it)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
