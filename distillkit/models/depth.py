"""A model's depth from its config alone (no weights), for checks that must run before any loading.

:func:`model_depth` answers "how many decoder layers does this side of the pair have?" from

* ``init: random``: the normalized override ``layers``, else the ``arch`` config class built from
  ``arch_config`` (the same ``AutoConfig.for_model(arch, **arch_config)`` that
  :func:`distillkit.models.pair.build_config` uses, so both agree; no hub look-up);
* ``init: pretrained``: ``config.json`` of the local folder ``path``, or of the HF id ``path`` as
  found in the local HF cache (offline) or fetched alone (online): a few kB, never the weights.

:func:`check_model_path` is the one rule for "is this a local folder?": a path written as a path
(absolute, ``./``, ``../``, ``~``, or an existing file) that is not a folder fails naming the key,
instead of reaching HF's hub-id parser and its "Repo id must be in the form ..." message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distillkit.errors import ModelLoadError

#: where families keep their layer count (HF maps most of them to ``num_hidden_layers``)
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def looks_like_local_path(path: str) -> bool:
    """True for a path written as a path, which must then be a local folder (not an HF id)."""
    p = str(path)
    return (
        os.path.isabs(p)
        or p in (".", "..")
        or p.startswith(("./", "../", "~", ".\\", "..\\"))
        or os.path.exists(os.path.expanduser(p))
    )


def check_model_path(path: str, key: str, what: str = "model") -> None:
    """Raise :class:`ModelLoadError` when ``path`` is written as a local path but is not a folder."""
    p = str(path)
    if not looks_like_local_path(p):
        return
    full = Path(p).expanduser()
    if full.is_dir():
        return
    state = "is a file, not a folder" if full.exists() else "is not a folder (no such directory)"
    raise ModelLoadError(
        f"{key}={p!r} {state}: point it at a local folder with the {what} files "
        "(config.json, weights, tokenizer), or give an HF hub id such as 'gpt2'."
    )


def _layers_of(config: Any, where: str, key: str) -> int:
    for name in LAYER_KEYS:
        n = getattr(config, name, None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    raise ModelLoadError(
        f"{where} gives no layer count (none of {', '.join(LAYER_KEYS)}); set {key}=<number of layers>."
    )


def model_depth(side: Any, role: str) -> int:
    """The number of decoder layers of one side (``model.teacher`` or ``model.student``), from its
    config only; ``hidden_states`` indices of that model then run ``0..depth`` (0 = embeddings).

    Raises :class:`ModelLoadError` naming the config key to set when the depth cannot be read.
    """
    from transformers import AutoConfig

    prefix = f"model.{role}"
    init = getattr(side.get("init"), "value", side.get("init")) or "pretrained"
    if init == "random":
        if side.get("layers") is not None:
            return int(side.get("layers"))
        arch = side.get("arch")
        if not arch:
            raise ModelLoadError(
                f"{prefix}.init=random needs {prefix}.arch (an HF model_type: gpt2, qwen2, llama, mistral, opt)."
            )
        settings = dict(side.get("arch_config") or {})
        try:
            config = AutoConfig.for_model(str(arch), **settings)
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{prefix}.arch={arch!r} / {prefix}.arch_config: {err}") from err
        return _layers_of(config, f"{prefix}.arch={arch} with {prefix}.arch_config", f"{prefix}.layers")
    path = side.get("path")
    if not path:
        raise ModelLoadError(
            f"{prefix}.path is empty: give an HF id or a local folder, or {prefix}.init=random."
        )
    check_model_path(str(path), f"{prefix}.path")
    try:
        config = AutoConfig.from_pretrained(str(Path(str(path)).expanduser()))
    except (OSError, ValueError) as err:
        hint = (
            "a local folder without a readable config.json"
            if Path(str(path)).expanduser().is_dir()
            else "an HF id that is neither in the local HF cache nor reachable (offline?)"
        )
        raise ModelLoadError(
            f"{prefix}.path={str(path)!r} is {hint}: {str(err).rstrip('.')}. Point {prefix}.path at a local "
            "folder with config.json."
        ) from err
    return _layers_of(config, f"config.json of {prefix}.path={str(path)!r}", f"{prefix}.path")
